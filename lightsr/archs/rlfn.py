"""RLFN: Residual Local Feature Network (Kong et al., CVPRW 2022; NTIRE 2022 efficient-SR winner).

Written from ``specs/RLFN.md`` (upstream: bytedance/RLFN, Apache-2.0). One module covers the three
released variants, which differ only in widths and depth:

============  ==========  ===============  ======  ======
model         features F  mid_channels M   blocks  scales
============  ==========  ===============  ======  ======
rlfn          52          52               6       2, 4
rlfn-s        48          48               6       2, 4
rlfn-ntire    46          48 (each block)  4       4
============  ==========  ===============  ======  ======

``arch_config`` keys: ``scale``, ``features``, ``mid_channels`` (one int for every block, or a list with one
width per block, as a pruned network may have), ``blocks``, and optionally ``esa_channels`` (16) and
``in_channels`` (3). The network works on RGB in **0..255** (the upstream test script scales by 255).

Key names equal the upstream ones, so :func:`convert_state_dict` renames nothing.

Example:
    >>> import torch
    >>> from lightsr.archs import rlfn
    >>> net = rlfn.build({"scale": 4, "features": 46, "mid_channels": 48, "blocks": 4})
    >>> net(torch.rand(1, 3, 15, 17) * 255).shape
    torch.Size([1, 3, 60, 68])
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightsr.archs._common import ArchTraits, check_keys, exact_fit, positive_ints
from lightsr.errors import CheckpointError

__all__ = [
    "CONVERSION_SHRINKS",
    "ESA",
    "RLFB",
    "RLFN",
    "SKETCHES",
    "build",
    "convert_state_dict",
    "match_state_dict",
    "traits",
]

# Architecture sketches for the docs (docs/models.md), one per model of this family; from its spec.
SKETCHES: dict[str, str] = {
    "rlfn": """\
x ─ conv3x3 3→52 ─ RLFB ×6 ─ conv3x3 ─(+)─ conv3x3 52→3·s² ─ PixelShuffle×s
                 └──── long skip ────┘
RLFB: three conv3x3 + LeakyReLU 0.05 with a residual add, conv1x1, then a lightened ESA (no ReLUs, bilinear
      mask). 0..255 input; x2/x4.""",
    "rlfn-s": """\
RLFN at 48 channels (RLFB ×6, same blocks and forward): 12 % fewer parameters at the same Set5 PSNR. 0..255 \
input.""",
    "rlfn-ntire": """\
RLFN pruned for the NTIRE 2022 efficient-SR challenge (winner of its runtime track): four RLFBs, 46 feature \
and
48 inner channels; 317 K parameters. 0..255 input; x4 only. Also the NTIRE 2024 challenge baseline.""",
}
# convert_state_dict keeps every upstream parameter (tests/test_manifest.py checks the count).
CONVERSION_SHRINKS: str | None = None

# ESA's unpadded stride-2 3x3 conv followed by a 7x7/3 max-pool needs at least 15 input pixels per side:
# (15 - 3) // 2 + 1 = 7 = the pool window.
MIN_SIZE = 15
# ESA's coarse grid: stride 2 (conv) x stride 3 (pool).
ESA_STRIDE = 6


class ESA(nn.Module):
    """Enhanced spatial attention, RLFN variant: no ReLUs, no conv_max/conv3_ (see the spec)."""

    def __init__(self, channels: int, esa_channels: int = 16):
        super().__init__()
        f = esa_channels
        self.conv1 = nn.Conv2d(channels, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)
        p = F.max_pool2d(self.conv2(a), kernel_size=7, stride=3)
        p = self.conv3(p)
        p = F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(p + self.conv_f(a)))


class RLFB(nn.Module):
    """Residual local feature block: three 3x3 conv + LeakyReLU(0.05), residual, 1x1 conv, ESA."""

    def __init__(self, channels: int, mid_channels: int, esa_channels: int = 16):
        super().__init__()
        self.c1_r = nn.Conv2d(channels, mid_channels, 3, padding=1)
        self.c2_r = nn.Conv2d(mid_channels, mid_channels, 3, padding=1)
        self.c3_r = nn.Conv2d(mid_channels, channels, 3, padding=1)
        self.c5 = nn.Conv2d(channels, channels, 1)
        self.esa = ESA(channels, esa_channels)
        self.act = nn.LeakyReLU(0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.c1_r(x))
        o = self.act(self.c2_r(o))
        o = self.act(self.c3_r(o)) + x
        return self.esa(self.c5(o))


class RLFN(nn.Module):
    """RLFN network on RGB in 0..255; output is ``scale`` times larger, also 0..255 (not clamped).

    Example:
        >>> import torch
        >>> RLFN(scale=2, features=8, mid_channels=[8, 6], blocks=2)(torch.rand(1, 3, 16, 16)).shape
        torch.Size([1, 3, 32, 32])
    """

    def __init__(
        self,
        *,
        scale: int,
        features: int,
        mid_channels: int | list[int],
        blocks: int,
        esa_channels: int = 16,
        in_channels: int = 3,
    ):
        super().__init__()
        mids = _mid_list(mid_channels, blocks)
        self.scale = scale
        self.blocks = blocks
        self.conv_1 = nn.Conv2d(in_channels, features, 3, padding=1)
        # block_1 .. block_N as attributes (not a ModuleList) so the keys equal the upstream ones.
        for i, mid in enumerate(mids, start=1):
            self.add_module(f"block_{i}", RLFB(features, mid, esa_channels))
        self.conv_2 = nn.Conv2d(features, features, 3, padding=1)
        self.upsampler = nn.Sequential(
            nn.Conv2d(features, in_channels * scale * scale, 3, padding=1), nn.PixelShuffle(scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv_1(x)
        b = f
        for i in range(1, self.blocks + 1):
            b = getattr(self, f"block_{i}")(b)
        return self.upsampler(self.conv_2(b) + f)


def _mid_list(mid_channels: int | list[int], blocks: int) -> list[int]:
    if isinstance(mid_channels, int):
        return [mid_channels] * blocks
    mids = [int(m) for m in mid_channels]
    if len(mids) != blocks:
        raise CheckpointError(
            f"RLFN arch_config lists {len(mids)} mid_channels widths for {blocks} blocks; "
            "give one width per block, or a single int for all"
        )
    return mids


def _check_config(config: dict[str, Any]) -> None:
    example = {"scale": 4, "features": 52, "mid_channels": 52, "blocks": 6}
    required = ("scale", "features", "mid_channels", "blocks")
    check_keys("RLFN", config, (*required, "esa_channels", "in_channels"), example, required=required)
    positive_ints("RLFN", config, ("scale", "features", "blocks"), example)


def build(config: dict[str, Any]) -> RLFN:
    """The RLFN network for ``config`` (native range 0..255).

    Example:
        >>> build({"scale": 2, "features": 52, "mid_channels": 52, "blocks": 6}).scale
        2
    """
    _check_config(config)
    return RLFN(
        scale=int(config["scale"]),
        features=int(config["features"]),
        mid_channels=config["mid_channels"],
        blocks=int(config["blocks"]),
        esa_channels=int(config.get("esa_channels", 16)),
        in_channels=int(config.get("in_channels", 3)),
    )


def traits(config: dict[str, Any]) -> ArchTraits:
    """Minimum input side 15 (ESA's stride-2 conv and 7x7 max-pool); any size multiple.

    Example:
        >>> traits({"scale": 4, "features": 52, "mid_channels": 52, "blocks": 6}).min_size
        15
    """
    # Precision safety is measured per checkpoint and kept in its manifest record (``precision``). The
    # largest activation of any layer on Set5 is 4,007 (rlfn-ntire; 0..255 inputs), 16x below fp16's 65,504.
    return ArchTraits(min_size=MIN_SIZE, size_multiple=1, tile_align=ESA_STRIDE)


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Upstream RLFN / RLFN_S / RLFN_Prune tensors -> this module's: the keys are already identical.

    Example:
        >>> sd = build({"scale": 2, "features": 8, "mid_channels": 8, "blocks": 1}).state_dict()
        >>> convert_state_dict(sd, {}).keys() == sd.keys()
        True
    """
    return dict(state_dict)


_BLOCK_KEY = re.compile(r"^block_(\d+)\.c1_r\.weight$")


def match_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The ``arch_config`` an upstream RLFN state dict fits, read from its shapes, or ``None``.

    ``mid_channels`` is one int when every block has the same width, else a per-block list.

    Example:
        >>> sd = build({"scale": 4, "features": 46, "mid_channels": 48, "blocks": 4}).state_dict()
        >>> match_state_dict(sd)
        {'scale': 4, 'features': 46, 'mid_channels': 48, 'blocks': 4, 'esa_channels': 16, 'in_channels': 3}
    """
    try:
        head = state_dict["conv_1.weight"]
        up = state_dict["upsampler.0.weight"]
        tail = state_dict["conv_2.weight"]
    except KeyError:
        return None
    numbers = sorted(int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k)))
    if head.ndim != 4 or up.ndim != 4 or not numbers or numbers != list(range(1, len(numbers) + 1)):
        return None
    in_channels, features = int(head.shape[1]), int(head.shape[0])
    ratio, rem = divmod(int(up.shape[0]), in_channels)
    scale = round(ratio**0.5)
    if rem or scale * scale != ratio or tuple(tail.shape[:2]) != (features, features):
        return None
    mids = [int(state_dict[f"block_{i}.c1_r.weight"].shape[0]) for i in numbers]
    esa = state_dict.get("block_1.esa.conv1.weight")
    if esa is None:
        return None
    config: dict[str, Any] = {
        "scale": scale,
        "features": features,
        "mid_channels": mids[0] if len(set(mids)) == 1 else mids,
        "blocks": len(numbers),
        "esa_channels": int(esa.shape[0]),
        "in_channels": in_channels,
    }
    # The key pattern is shared with other RFDN-style networks: accept only an exact fit.
    return exact_fit(build, config, state_dict)
