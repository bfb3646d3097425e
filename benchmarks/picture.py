"""Draws the README's picture, docs/images/kernels.png, from a finished SWS run.

    python benchmarks/picture.py RUN_FOLDER [--out docs/images/kernels.png]

The run's own PNGs are placed side by side at 100 % (one image pixel per screen
pixel), with titles: the first layer's kernels at 4 x 4 locations of every
filter, and its specialisation heat map with the centroids marked. Needs
matplotlib (`pip install ".[plot]"`).
"""

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder with kernel_images/")
    parser.add_argument("--layer", default="sws1")
    parser.add_argument("--out", type=Path, default=Path("docs/images/kernels.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = args.run / "kernel_images"
    panels = [
        (f"{args.layer}: each filter's kernel at 4 x 4 locations", "kernels"),
        ("specialisation (o: centroids)", "specialisation"),
    ]
    pictures = []
    for title, name in panels:
        path = images / f"{args.layer}_{name}.png"
        if not path.is_file():
            print(f"picture.py: no {path}; pass a finished SWS run's folder", file=sys.stderr)
            return 1
        pictures.append((title, name, plt.imread(path)))
    dpi, gap, head, foot = 100, 30, 30, 20
    width = sum(p.shape[1] for _, _, p in pictures) + gap * (len(pictures) + 1) + 60
    height = max(p.shape[0] for _, _, p in pictures) + head + foot
    figure = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    left = gap
    for title, name, picture in pictures:
        h, w = picture.shape[:2]
        axes = figure.add_axes((left / width, (height - head - h) / height, w / width, h / height))
        axes.imshow(picture, interpolation="nearest")
        axes.set_axis_off()
        figure.text(left / width, (height - head + 10) / height, title, fontsize=10)
        if name == "specialisation":
            # the heat map's colour bar: log scale, ticks at thirds (0.01, 0.1)
            for fraction, label in ((0, "0.001"), (1 / 3, "0.01"), (2 / 3, "0.1"), (1, "1")):
                figure.text(
                    (left + fraction * w) / width,
                    (height - head - h - 14) / height,
                    label,
                    fontsize=8,
                    ha="center",
                )
        left += w + gap
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=dpi)
    print(f"wrote {args.out} from {args.run}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
