"""`make gpu-check`: one prepared run of every GPU path of swsl-train, as one markdown table.

On a machine with a GPU (`--size full`, the default there) it trains real
60,000-image epochs; elsewhere (`--size tiny`, the default without a GPU) the
same steps run on the CPU at a tiny size, and the table says so. Exit status 1
if any check fails. The checks, each through the real command line:

- device: the device line swsl-train prints, and that the run trained on a GPU;
- one epoch of every `--layer`: seconds per epoch, images/s, test accuracy;
- the SWS layer's forward + backward with `implementation="conv"` and
  `"local"` at both layers' shapes (what `implementation="auto"` decides);
- two runs with the same `--seed`: identical metrics, or the error that names
  the op without a deterministic kernel;
- `--precision mixed_float16` against `float32`: speed and accuracy;
- `--jit_compile on` against off (XLA; without `--seed`, which turns it off);
- SIGINT during the second epoch, then the printed resume command, pasted as is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SIZES = {
    # images per training epoch, test images, extra flags
    "full": (60000, 10000, []),
    "tiny": (256, 128, ["--n_filters", "4", "8"]),
}


@dataclass
class Row:
    check: str
    setting: str
    seconds: float | None = None
    images_per_second: float | None = None
    accuracy: float | None = None
    result: str = "ok"

    def cells(self) -> list[str]:
        def text(value, spec):
            return "-" if value is None else format(value, spec)

        return [
            self.check,
            f"`{self.setting}`" if self.setting else "",
            text(self.seconds, ".1f"),
            text(self.images_per_second, ",.0f"),
            text(None if self.accuracy is None else 100 * self.accuracy, ".2f"),
            self.result,
        ]


@dataclass
class Checks:
    size: str
    logdir: Path
    rows: list[Row] = field(default_factory=list)

    @property
    def budget(self) -> list[str]:
        train, test, extra = SIZES[self.size]
        return ["--max_train_examples", str(train), "--max_test_examples", str(test), *extra]

    def command(self, name: str, *flags: str) -> list[str]:
        return [
            sys.executable, "-m", "swsl_cli", "--logdir", str(self.logdir), "--run_name", name,
            "--n_epochs", "1", "--quiet", *self.budget, *flags,
        ]  # fmt: skip

    def train(self, name: str, *flags: str) -> tuple[subprocess.CompletedProcess, dict | None]:
        """Runs swsl-train; its output and its `metrics.json` (None when it failed)."""
        result = subprocess.run(self.command(name, *flags), capture_output=True, text=True)
        metrics_file = self.logdir / name / "metrics.json"
        if result.returncode != 0 or not metrics_file.is_file():
            return result, None
        return result, json.loads(metrics_file.read_text())

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(" | ".join(row.cells()), flush=True)
        return row

    def epoch_row(self, check: str, setting: str, result, metrics) -> Row:
        if metrics is None:
            return self.add(Row(check, setting, result=f"FAILED: {last_line(result)}"))
        epoch = metrics["epochs"][-1]
        return self.add(
            Row(
                check,
                setting,
                epoch["seconds"],
                epoch["images_per_second"],
                metrics["test_accuracy"],
            )
        )

    @property
    def failed(self) -> bool:
        return any(row.result.startswith("FAILED") for row in self.rows)


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1][:200] if lines else f"exit {result.returncode}"


def device(checks: Checks, gpu: bool) -> dict | None:
    result, metrics = checks.train("device", "--seed", "0")
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("device:")), "")
    row = checks.epoch_row("device", "swsl-train --seed 0", result, metrics)
    if metrics is not None:
        row.result = line.removeprefix("device: ")
        on_gpu = metrics["device"].startswith("GPU:")
        if gpu and not on_gpu:
            row.result = f"FAILED: trained on the CPU ({metrics['device']})"
    return metrics


def layers(checks: Checks, default: dict | None) -> None:
    from swsl_cli.runner.config import LAYERS

    for layer in LAYERS:
        if layer == "sws" and default is not None:  # the device check trained it
            checks.add(
                Row(
                    "one epoch",
                    "--layer sws",
                    default["epochs"][-1]["seconds"],
                    default["epochs"][-1]["images_per_second"],
                    default["test_accuracy"],
                )
            )
            continue
        result, metrics = checks.train(f"layer-{layer}", "--layer", layer, "--seed", "0")
        checks.epoch_row("one epoch", f"--layer {layer}", result, metrics)


def determinism(checks: Checks, first: dict | None) -> None:
    result, again = checks.train("device-again", "--seed", "0")
    if first is None or again is None:
        checks.add(Row("same --seed twice", "--seed 0", result=f"FAILED: {last_line(result)}"))
        return
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    differ = [key for key in keys if first["epochs"][-1][key] != again["epochs"][-1][key]]
    verdict = "identical metrics" if not differ else f"FAILED: {', '.join(differ)} differ"
    checks.add(
        Row("same --seed twice", "--seed 0", accuracy=again["test_accuracy"], result=verdict)
    )


def precision(checks: Checks, default: dict | None) -> None:
    result, metrics = checks.train("float32", "--precision", "float32", "--seed", "0")
    row = checks.epoch_row("precision", "--precision float32", result, metrics)
    if metrics is not None and default is not None:
        speed = (
            default["epochs"][-1]["images_per_second"] / metrics["epochs"][-1]["images_per_second"]
        )
        row.result = f"default ({default['precision']}) at {speed:.2f} x this speed"


def xla(checks: Checks) -> None:
    for setting in ("off", "on"):
        result, metrics = checks.train(f"jit-{setting}", "--jit_compile", setting)
        row = checks.epoch_row("XLA, no --seed", f"--jit_compile {setting}", result, metrics)
        if metrics is not None:
            row.result = f"XLA {'on' if metrics['jit_compile'] else 'off'} as Keras kept it"


def resume(checks: Checks) -> None:
    """SIGINT during epoch 2 of 2, then the printed resume command, pasted as is."""
    command = checks.command("resume", "--seed", "1")
    command[command.index("--n_epochs") + 1] = "2"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("epoch 1/2"):
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate()
    if process.returncode != 130 or "Resume with:" not in out:
        checks.add(
            Row("SIGINT, resume", "", result=f"FAILED: exit {process.returncode}: {err[-200:]}")
        )
        return
    pasted = out.split("Resume with:\n", 1)[1].strip().splitlines()[0]
    # The printed command is `swsl-train ...`; this Python runs it as `python -m swsl_cli`.
    argv = [sys.executable, "-m", "swsl_cli", *shlex.split(pasted)[1:]]
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    metrics = json.loads((checks.logdir / "resume" / "metrics.json").read_text())
    epochs = [epoch["epoch"] for epoch in metrics["epochs"]]
    ok = result.returncode == 0 and metrics["status"] == "completed" and epochs == [1, 2]
    checks.add(
        Row(
            "SIGINT in epoch 2, resume",
            "the printed swsl-train --resume ...",
            time.perf_counter() - started,
            accuracy=metrics.get("test_accuracy"),
            result=f"exit 130, then epochs {epochs}" if ok else f"FAILED: {last_line(result)}",
        )
    )


def layer_steps(checks: Checks) -> None:
    """The SWS layer's forward + backward per implementation at the network's shapes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import best_step_ms, layer_step

    kinds = ("Conv2D", "SWS conv", "SWS local, fixed centroids", "SWS local")
    filters = (24, 48) if checks.size == "full" else (4, 8)
    for name, shape, width, kernel, input_gradient in (
        ("layer 1", (64, 28, 28, 1), filters[0], 7, False),
        ("layer 2", (64, 14, 14, filters[0]), filters[1], 3, True),
    ):
        times = best_step_ms(
            {kind: layer_step(kind, shape, width, kernel, input_gradient) for kind in kinds},
            rounds=3,
        )
        for kind, ms in times.items():
            note = "" if kind == "Conv2D" else f"{ms / times['Conv2D']:.2f} x Conv2D"
            result = f"{ms:.2f} ms" + (f", {note}" if note else "")
            checks.add(Row(f"{name} fwd+bwd, {kind}", f"input {shape}", result=result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, help="default: full with a GPU, else tiny")
    parser.add_argument("--out", default="bench-out/gpu-check.md")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Every swsl-train process and this one's layer steps share the GPU.
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    size = args.size or ("full" if gpu else "tiny")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as logdir:
        checks = Checks(size, Path(logdir))
        default = device(checks, gpu)
        layers(checks, default)
        determinism(checks, default)
        precision(checks, default)
        xla(checks)
        resume(checks)
        layer_steps(checks)
    where = default["device"] if default else "device unknown (the first run failed)"
    if not gpu:
        where = f"no GPU: on the CPU ({platform.machine()}, {os.cpu_count()} cores), at a tiny size"
    train, test, extra = SIZES[size]
    header = [
        f"`python benchmarks/gpu_check.py --size {size}`, {where}, TF {tf.__version__}: "
        f"{train:,} training / {test:,} test images per run"
        f"{' with ' + ' '.join(extra) if extra else ''}; {time.perf_counter() - started:.0f} s "
        "in all.",
        "",
        "| check | setting | seconds | images/s | test accuracy % | result |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    table = header + ["| " + " | ".join(row.cells()) + " |" for row in checks.rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
