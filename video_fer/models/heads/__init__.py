"""Heads on a face backbone: the registry (:func:`create_head`), one family per file beside it.

Every head's ``forward(features=None, *, images=None, landmarks=None, ...)`` returns a
:class:`~video_fer.models.heads.common.HeadOutput` with its attention weights; the shared
pieces (backbone protocol, map lookup, pooling, small encoders) are in ``common.py``.

=================  =====================================  ==============
name               class                                  file
=================  =====================================  ==============
``linear``         :class:`LinearProbeHead`               ``linear.py``
``acnn``/``pacnn`` :class:`ACNNHead`                      ``acnn.py``
``ran``            :class:`RANHead`                       ``ran.py``
``prior_attention`` :class:`PriorAttentionHead`           ``prior.py``
``aha``            :class:`AHAHead`                       ``aha.py``
``two_level_va``   :class:`TwoLevelAttentionVAHead`       ``va.py``
=================  =====================================  ==============
"""
from __future__ import annotations

from typing import Any

from torch import nn

from video_fer.errors import ConfigError
from video_fer.models.heads.acnn import ACNNHead
from video_fer.models.heads.aha import AHAHead
from video_fer.models.heads.common import HeadOutput, backbone_channels
from video_fer.models.heads.linear import LinearProbeHead
from video_fer.models.heads.prior import PriorAttentionHead
from video_fer.models.heads.ran import RANHead
from video_fer.models.heads.va import TwoLevelAttentionVAHead

HEADS = {
    "linear": LinearProbeHead,
    "acnn": ACNNHead,
    "pacnn": lambda **kw: ACNNHead(use_global_unit=False, **kw),
    "ran": RANHead,
    "prior_attention": PriorAttentionHead,
    "aha": AHAHead,
    "two_level_va": TwoLevelAttentionVAHead,
}


def create_head(name: str, **options: Any) -> nn.Module:
    """Build a head by name: ``linear``, ``acnn``, ``pacnn``, ``ran``, ``prior_attention``, ``aha``, ``two_level_va``."""
    if name not in HEADS:
        raise ConfigError(f"head: unknown head {name!r}; choose one of {sorted(HEADS)}")
    return HEADS[name](**options)


__all__ = ["HEADS", "ACNNHead", "AHAHead", "HeadOutput", "LinearProbeHead", "PriorAttentionHead", "RANHead",
           "TwoLevelAttentionVAHead", "backbone_channels", "create_head"]
