"""The host memory a run on the CPU needs at least, against what the machine has free.

A per-cell layer on large images has hundreds of millions of weights (`--layer local
--image_size 300`: about 377 M), and training them keeps several float32 copies: the
gradients, Adam's two moments and the weight average. Where that cannot fit, the run says so
before its first step instead of swapping or being killed without a word.
"""

from __future__ import annotations

import os
from pathlib import Path

GIB = 1024**3
# The least and the most a run's peak memory was measured at, as multiples of `shortfall`'s
# lower bound; the warning comes from the least on.
MEASURED_PEAKS = (1.5, 2.4)


def available_bytes() -> int | None:
    """The memory this process can still take, or None where the system does not say.

    Linux's `MemAvailable`, capped by what this process's cgroup (v2 or v1) still allows;
    page cache the kernel can drop counts as free in both.
    """
    values = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                values.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup = _cgroup_free()
    if cgroup is not None:
        values.append(cgroup)
    if not values:
        try:
            values.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return max(0, min(values))


# Per cgroup version: the folder its memory controller is mounted at, the limit, the usage,
# and the key of the page cache it can drop in memory.stat.
CGROUP_FILES = {
    "v2": ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
    "v1": (
        "/sys/fs/cgroup/memory",
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
        "total_inactive_file",
    ),
}
PROC_CGROUP = "/proc/self/cgroup"
NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2^63


def _cgroup_free() -> int | None:
    """What the memory limit of this process's cgroup still allows; None without a limit."""
    try:
        lines = Path(PROC_CGROUP).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        version = (
            "v2" if controllers == "" else "v1" if "memory" in controllers.split(",") else None
        )
        if version is None:
            continue
        root, limit_file, usage_file, cache_key = CGROUP_FILES[version]
        # Inside a container the process's own cgroup is often mounted at the root.
        for folder in (Path(root + path.rstrip("/")), Path(root)):
            try:
                limit = (folder / limit_file).read_text().strip()
                if limit == "max" or int(limit) >= NO_LIMIT:
                    return None
                used = int((folder / usage_file).read_text())
                stat = dict(
                    entry.split() for entry in (folder / "memory.stat").read_text().splitlines()
                )
                return int(limit) - used + int(stat.get(cache_key, 0))
            except (OSError, ValueError):
                continue
    return None


def size(count: int) -> str:
    """`5.6 GiB`, `12 MiB`."""
    return f"{count / GIB:.1f} GiB" if count >= GIB else f"{count / (1 << 20):.0f} MiB"


def shortfall(
    parameters: int,
    activations: int,
    ema: bool,
    available: int | None,
    held: int = 0,
    activation_bytes: int = 4,
) -> str | None:
    """A warning when what training adds to the built model's weights may not fit.

    Per weight, float32: its gradient, Adam's two moments and, with `ema`, the
    weight average; per value of `activations` (one batch's layer outputs and
    patches, `activation_bytes` each), the value and its gradient; less the
    `held` values of optimizer state a restored model has already allocated.
    That is a lower bound: the whole process peaked at 1.5-2.4 times it in
    runs of the local, conv and SWS nets at 100-300 pixels (`MEASURED_PEAKS`),
    so the warning comes at 1.5 times it.
    """
    needed = (
        max(0, 4 * (parameters * (4 if ema else 3) - held)) + 2 * activation_bytes * activations
    )
    if available is None or needed * MEASURED_PEAKS[0] <= available:
        return None
    kept = "gradients, Adam's moments" + (", the weight average" if ema else "")
    low, high = MEASURED_PEAKS
    return (
        f"training {parameters:,} parameters needs at least {size(needed)} more memory "
        f"({kept}, a batch's activations; runs peaked at {low}-{high} times that), and "
        f"{size(available)} is free: expect swapping or the process to be killed; a smaller "
        "--image_size, --n_filters or --batch_size needs less"
    )
