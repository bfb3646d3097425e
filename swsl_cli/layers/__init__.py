"""The layer library: Keras 3 layers of the convolution / soft sharing / locally connected spectrum.

Only `keras.ops` and numpy, so every layer runs on the TensorFlow, JAX and
PyTorch backends. Importing this package registers the layers and the
optimizer with Keras, so `keras.models.load_model` reads a saved model after it.
"""

from swsl_cli.layers.coordinates import CoordinateChannels
from swsl_cli.layers.locally_connected import LocallyConnected2D
from swsl_cli.layers.low_rank_local import LowRankLocallyConnected2D
from swsl_cli.layers.lrn import LocalResponseNormalization
from swsl_cli.layers.optimizers import FusedAdam
from swsl_cli.layers.sws_conv import (
    SoftWeightSharingConv2D,
    centroid_count,
    grid_centroids,
    similarity_from_distance,
)

__all__ = [
    "CoordinateChannels",
    "FusedAdam",
    "LocallyConnected2D",
    "LocalResponseNormalization",
    "LowRankLocallyConnected2D",
    "SoftWeightSharingConv2D",
    "centroid_count",
    "grid_centroids",
    "similarity_from_distance",
]
