"""Pieces shared by the architecture files: the traits record and the 0..1 range adapter."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ArchTraits:
    """What a caller must know about a network to feed it.

    min_size: the smallest input height/width (in LR pixels) the network accepts.
    size_multiple: input height and width must be multiples of this.
    fp16_safe / bf16_safe: whether reduced precision keeps quality (checked by the precision tests).
    tile_align: the stride of the network's coarse (downsampled) branches, e.g. 6 for ESA's stride-2
        conv then stride-3 max-pool. Tile windows start on multiples of it, so every tile sees the
        same coarse grid as the whole image (1: the network has no such branch).
    """

    min_size: int = 1
    size_multiple: int = 1
    fp16_safe: bool = True
    bf16_safe: bool = True
    tile_align: int = 1


class NativeRange(nn.Module):
    """Wraps a network trained on 0..``value_range`` so that it takes and returns 0..1.

    The one place where checkpoint value ranges are handled: for ``value_range == 1`` it is a no-op.
    """

    def __init__(self, net: nn.Module, value_range: float = 1.0):
        super().__init__()
        self.net = net
        self.value_range = float(value_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.value_range == 1.0:
            return self.net(x)
        return self.net(x * self.value_range) / self.value_range
