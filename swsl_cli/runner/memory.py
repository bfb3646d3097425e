"""The host memory a run on the CPU needs at least, against what the machine has free.

A per-cell layer on large images has hundreds of millions of weights (`--layer local
--image_size 300`: about 374 M), and training them keeps several float32 copies: the
gradients, Adam's two moments and the weight average. Where that cannot fit, the run says so
before its first step instead of swapping or being killed without a word.
"""

from __future__ import annotations

import os
from pathlib import Path

GIB = 1024**3
# The least a run's peak memory was measured at, as a multiple of `shortfall`'s lower bound.
MEASURED_PEAK = 1.5


def available_bytes() -> int | None:
    """The memory this process can still take, or None where the system does not say.

    Linux's `MemAvailable`, capped by the cgroup's (v2) limit where one is set.
    """
    values = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                values.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            values.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    if not values:
        try:
            values.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return max(0, min(values))


def size(count: int) -> str:
    """`5.6 GiB`, `12 MiB`."""
    return f"{count / GIB:.1f} GiB" if count >= GIB else f"{count / (1 << 20):.0f} MiB"


def shortfall(parameters: int, activations: int, ema: bool, available: int | None) -> str | None:
    """A warning when what training adds to the built model's weights may not fit.

    Per weight, float32: its gradient, Adam's two moments and, with `ema`, the
    weight average; per value of `activations` (one batch's layer outputs and
    patches), the value and its gradient. That is a lower bound: the whole
    process peaked at 1.5-2.4 times it in runs of the local, conv and SWS nets
    at 100-300 pixels, so the warning comes at 1.5 times it.
    """
    needed = 4 * (parameters * (4 if ema else 3) + 2 * activations)
    if available is None or needed * MEASURED_PEAK <= available:
        return None
    kept = "gradients, Adam's moments" + (", the weight average" if ema else "")
    return (
        f"training {parameters:,} parameters needs at least {size(needed)} more memory "
        f"({kept}, a batch's activations; runs peaked at 1.5-2.4 times that), and "
        f"{size(available)} is free: expect swapping or the process to be killed; a smaller "
        "--image_size, --n_filters or --batch_size needs less"
    )
