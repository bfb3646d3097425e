"""swsl-cli: the spatial interpolation soft weight sharing (SISWS) layer and its runner.

`import swsl_cli` registers the package's Keras layers and optimizer, so
that `keras.models.load_model` reads a saved `model.keras` after it. Started as
the `swsl-train` command (or `python -m swsl_cli`), the package skips that
import: `--help` and every refusal answer without loading TensorFlow, and
the runner imports the layers when it trains.
"""

import os
import sys

__version__ = "0.3.1"
LAYER_NAMES = ("SoftWeightSharingConv2D", "LocallyConnected2D", "LocalResponseNormalization")
__all__ = [
    "SoftWeightSharingConv2D",
    "LocallyConnected2D",
    "LocalResponseNormalization",
    "__version__",
]


def _started_as_command() -> bool:
    """Whether this process is `swsl-train ...` or `python -m swsl_cli ...`."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    script = next((arg for arg in argv[1:] if not arg.startswith("-")), "")
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None
    return module == "swsl_cli" or os.path.basename(script) == "swsl-train"


def __getattr__(name):
    if name in LAYER_NAMES:
        from swsl_cli import layers

        return getattr(layers, name)
    raise AttributeError(f"module 'swsl_cli' has no attribute {name!r}")


if not _started_as_command():
    from swsl_cli.layers import (  # noqa: E402
        LocallyConnected2D,
        LocalResponseNormalization,
        SoftWeightSharingConv2D,
    )
    from swsl_cli.layers.optimizers import FusedAdam  # noqa: E402, F401
