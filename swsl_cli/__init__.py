"""swsl-cli: the spatial interpolation soft weight sharing (SISWS) layer and its runner.

`SoftWeightSharingConv2D` is imported on first use, so that importing the
package (as `swsl-train --help` does) does not load Keras or TensorFlow.
"""

__version__ = "0.1.0"
__all__ = [
    "SoftWeightSharingConv2D",
    "LocallyConnected2D",
    "LocalResponseNormalization",
    "__version__",
]


def __getattr__(name):
    if name in ("SoftWeightSharingConv2D", "LocallyConnected2D", "LocalResponseNormalization"):
        from swsl_cli import layers

        return getattr(layers, name)
    raise AttributeError(f"module 'swsl_cli' has no attribute {name!r}")
