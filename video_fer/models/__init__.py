"""Models: the twin-cycle autoencoder (``tae``, METHOD.md §1), warping (``warp``) and the downstream heads."""
from video_fer.models.tae import (EncoderFeatures, FaceActionEncoder, FlowDecoder, TAEConfig, TAEOutput,
                                  TwinCycleAutoencoder)
from video_fer.models.warp import fuse_flows, identity_grid, warp

__all__ = [
    "EncoderFeatures", "FaceActionEncoder", "FlowDecoder", "TAEConfig", "TAEOutput", "TwinCycleAutoencoder",
    "fuse_flows", "identity_grid", "warp",
]
