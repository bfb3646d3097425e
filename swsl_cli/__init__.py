"""swsl-cli: the spatial interpolation soft weight sharing (SISWS) layer, its relatives, their runner.

Two subpackages:

- `swsl_cli.layers`, the layer library: Keras 3 layers (`keras.ops` and
  numpy, every backend). Importing it registers the layers and `FusedAdam`
  with Keras, so that `keras.models.load_model` reads a saved model after it.
- `swsl_cli.runner`, `swsl-train`: everything that needs TensorFlow.

This module itself loads nothing heavy, so `swsl-train --help` answers at
once: the names below import the layer library when first used
(`from swsl_cli import SoftWeightSharingConv2D`).
"""

import sys

__version__ = "0.4.0"
PUBLIC_NAMES = (
    "CoordinateChannels",
    "FusedAdam",
    "LocallyConnected2D",
    "LocalResponseNormalization",
    "LowRankLocallyConnected2D",
    "SoftWeightSharingConv2D",
)
__all__ = [*PUBLIC_NAMES, "__version__"]


def __getattr__(name):
    if name in PUBLIC_NAMES:
        from swsl_cli import layers

        return getattr(layers, name)
    raise AttributeError(f"module 'swsl_cli' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *PUBLIC_NAMES])


# Code written for 0.3 registered the layers with `import keras; import swsl_cli`.
# Where Keras is loaded already, registering costs nothing, so it happens here too.
if "keras" in sys.modules:
    from swsl_cli import layers  # noqa: E402, F401
