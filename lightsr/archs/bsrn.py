"""BSRN: Blueprint Separable Residual Network (Li et al., CVPR Workshops 2022).

Written from ``../shared/specs/BSRN.md`` (a prose description of xiaom233/BSRN @ 2d63d52, MIT); no upstream
code was copied. The official x2/x3/x4 checkpoints (``net_g_BSRN_x{2,3,4}.pth``, 64 channels, 8 ESDB blocks,
BSConvU everywhere, ``pixelshuffledirect`` upsampler) load into :class:`BSRN` with their own key names, so
:func:`convert_state_dict` only checks them and passes them through.

Native range 0..1 (BasicSR, no mean shift). The ESA branch of every block downsamples with a stride-2 3x3
conv (no padding) and a 7x7 max-pool with stride 3, so the input must be at least 15 x 15 LR pixels; there
is no size multiple (the attention map is resized back bilinearly to any size).

The BSRN-S files (``net_g_BSRN-S.pth``, NTIRE 2022 team 18) are a different, undocumented class
("RFDNFINALB5": linear pointwise layers, per-block channel weights) and are not supported here;
:func:`match_state_dict` returns ``None`` for them.

Example:
    >>> import torch
    >>> from lightsr.archs import bsrn
    >>> net = bsrn.build({"scale": 2}).eval()
    >>> net(torch.rand(1, 3, 16, 16)).shape
    torch.Size([1, 3, 32, 32])
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightsr.archs._common import ArchTraits, check_keys, exact_fit
from lightsr.errors import CheckpointError

__all__ = [
    "BSRN",
    "CONVERSION_SHRINKS",
    "SKETCHES",
    "build",
    "convert_state_dict",
    "match_state_dict",
    "traits",
]

# Architecture sketches for the docs (docs/models.md), one per model of this family; from its spec.
SKETCHES: dict[str, str] = {
    "bsrn": """\
x ─ repeat RGB ×4 (12 ch) ─ BSConv 12→64 ─ ESDB ×8 ─ concat(8×64) ─ conv1x1 + GELU ─ BSConv ─(+)─ conv3x3 \
64→3·s² ─ PixelShuffle×s
                                       └────────────────────── long skip ─────────────────────┘
BSConv (blueprint separable): pointwise conv1x1 then depthwise conv3x3.
ESDB: RFDB-style distillation with BSConvs and GELU, then ESA and contrast-aware channel attention, + input.
0..1 input; x2/x3/x4.""",
}
# convert_state_dict keeps every upstream parameter (tests/test_manifest.py checks the count).
CONVERSION_SHRINKS: str | None = None

# ESA: conv2 (3x3, stride 2, no padding) gives (n - 3) // 2 + 1 >= 7 for the 7x7 max-pool -> n >= 15.
MIN_SIZE = 15
# ESA's coarse grid: stride 2 (conv) x stride 3 (pool).
ESA_STRIDE = 6

_DEFAULTS: dict[str, Any] = {"scale": 4, "num_feat": 64, "num_blocks": 8, "in_channels": 3, "out_channels": 3}


class BSConvU(nn.Module):
    """Blueprint separable conv: 1x1 pointwise (no bias) first, then k x k depthwise (with bias)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.dw = nn.Conv2d(cout, cout, kernel_size, stride=stride, padding=padding, groups=cout, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.pw(x))


class ESA(nn.Module):
    """Enhanced spatial attention with BSConvU convolutions (n channels in, f inside)."""

    def __init__(self, n: int, f: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(n, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv_max = BSConvU(f, f, 3, padding=1)
        self.conv2 = BSConvU(f, f, 3, stride=2, padding=0)
        self.conv3 = BSConvU(f, f, 3, padding=1)
        self.conv3_ = BSConvU(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, n, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)
        p = F.max_pool2d(self.conv2(a), kernel_size=7, stride=3)
        p = F.gelu(self.conv_max(p))
        p = F.gelu(self.conv3(p))
        p = self.conv3_(p)
        p = F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(p + self.conv_f(a)))


class CCA(nn.Module):
    """Contrast-aware channel attention: (population std + mean) per channel -> squeeze-excite."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return x * self.conv_du(std + mean)


class ESDB(nn.Module):
    """Efficient separable distillation block: three distillation steps, ESA, CCA, block residual."""

    def __init__(self, channels: int):
        super().__init__()
        dc = channels // 2
        self.c1_d = nn.Conv2d(channels, dc, 1)
        self.c1_r = BSConvU(channels, channels)
        self.c2_d = nn.Conv2d(channels, dc, 1)
        self.c2_r = BSConvU(channels, channels)
        self.c3_d = nn.Conv2d(channels, dc, 1)
        self.c3_r = BSConvU(channels, channels)
        self.c4 = BSConvU(channels, dc)
        self.c5 = nn.Conv2d(dc * 4, channels, 1)
        self.esa = ESA(channels, 16)
        self.cca = CCA(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = F.gelu(self.c1_d(x))
        r1 = F.gelu(self.c1_r(x) + x)
        d2 = F.gelu(self.c2_d(r1))
        r2 = F.gelu(self.c2_r(r1) + r1)
        d3 = F.gelu(self.c3_d(r2))
        r3 = F.gelu(self.c3_r(r2) + r2)
        r4 = F.gelu(self.c4(r3))
        y = self.c5(torch.cat([d1, d2, d3, r4], dim=1))
        return self.cca(self.esa(y)) + x


class _PixelShuffleDirect(nn.Module):
    """One 3x3 conv to out_channels * scale^2, then PixelShuffle (keys ``upsampleOneStep.0``)."""

    def __init__(self, num_feat: int, out_channels: int, scale: int):
        super().__init__()
        self.upsampleOneStep = nn.Sequential(
            nn.Conv2d(num_feat, out_channels * scale * scale, 3, padding=1), nn.PixelShuffle(scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampleOneStep(x)


class BSRN(nn.Module):
    """BSRN on 0..1 RGB: N x 3 x H x W (H, W >= 15) -> N x 3 x sH x sW.

    Example:
        >>> import torch
        >>> BSRN(scale=3).eval()(torch.rand(1, 3, 15, 20)).shape
        torch.Size([1, 3, 45, 60])
    """

    def __init__(
        self,
        scale: int = 4,
        num_feat: int = 64,
        num_blocks: int = 8,
        in_channels: int = 3,
        out_channels: int = 3,
    ):
        super().__init__()
        self.scale = scale
        # The input is repeated 4 times along channels before the first conv (hence 4 * in_channels).
        self.fea_conv = BSConvU(in_channels * 4, num_feat)
        self.num_blocks = num_blocks
        for i in range(1, num_blocks + 1):
            setattr(self, f"B{i}", ESDB(num_feat))
        self.c1 = nn.Conv2d(num_feat * num_blocks, num_feat, 1)
        self.c2 = BSConvU(num_feat, num_feat)
        self.upsampler = _PixelShuffleDirect(num_feat, out_channels, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fea_conv(torch.cat([x, x, x, x], dim=1))
        outs = []
        h = f
        for i in range(1, self.num_blocks + 1):
            h = getattr(self, f"B{i}")(h)
            outs.append(h)
        z = F.gelu(self.c1(torch.cat(outs, dim=1)))
        return self.upsampler(self.c2(z) + f)


def _config(config: dict[str, Any]) -> dict[str, Any]:
    check_keys("BSRN", config, _DEFAULTS, {"scale": 4})
    c = {**_DEFAULTS, **config}
    if not all(isinstance(c[k], int) and c[k] >= 1 for k in _DEFAULTS) or c["num_feat"] % 16:
        raise CheckpointError(
            "BSRN arch_config needs positive integers and num_feat a multiple of 16 "
            "(its CCA squeezes by 16), "
            f"got {config!r}"
        )
    return c


def build(config: dict[str, Any]) -> BSRN:
    """The BSRN network for ``config`` (keys: scale, num_feat, num_blocks, in_channels, out_channels).

    Example:
        >>> build({"scale": 4}).upsampler.upsampleOneStep[0].out_channels
        48
    """
    c = _config(config)
    return BSRN(
        scale=int(c["scale"]),
        num_feat=int(c["num_feat"]),
        num_blocks=int(c["num_blocks"]),
        in_channels=int(c["in_channels"]),
        out_channels=int(c["out_channels"]),
    )


def traits(config: dict[str, Any]) -> ArchTraits:
    """At least 15 x 15 LR pixels (the ESA pooling), any size above.

    Precision safety is measured per checkpoint and kept in its manifest record (``precision``): the x2
    weights are unsafe in fp16 (their ESA activations pass fp16's range on noisy inputs), x2 and x3 in bf16.

    Example:
        >>> traits({"scale": 2}).min_size, traits({"scale": 2}).tile_align
        (15, 6)
    """
    _config(config)
    return ArchTraits(min_size=MIN_SIZE, size_multiple=1, tile_align=ESA_STRIDE)


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Upstream BSRN keys are already ours: returned as they are (a shallow copy).

    Example:
        >>> sd = build({"scale": 2}).state_dict()
        >>> convert_state_dict(sd, {"scale": 2}).keys() == sd.keys()
        True
    """
    _config(config)
    return dict(state_dict)


_BLOCK_KEY = re.compile(r"^B(\d+)\.c5\.weight$")


def match_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The arch_config of a BSRN state dict (scale, width and depth read from the shapes), else ``None``.

    Example:
        >>> match_state_dict(build({"scale": 3}).state_dict())["scale"]
        3
    """
    try:
        pw = state_dict["fea_conv.pw.weight"]
        up = state_dict["upsampler.upsampleOneStep.0.weight"]
        c1 = state_dict["c1.weight"]
        dw = state_dict["fea_conv.dw.weight"]
        esa2 = state_dict["B1.esa.conv2.pw.weight"]
    except KeyError:
        return None
    # BSRN-S ("RFDNFINALB5") shares many key names but stores pointwise layers as 2-D linear weights.
    if pw.ndim != 4 or dw.ndim != 4 or up.ndim != 4 or c1.ndim != 4 or esa2.ndim != 4:
        return None
    num_feat, in4 = int(pw.shape[0]), int(pw.shape[1])
    if in4 % 4:
        return None
    num_blocks = sum(1 for k in state_dict if _BLOCK_KEY.match(k))
    if num_blocks == 0 or int(c1.shape[1]) != num_feat * num_blocks:
        return None
    channels = in4 // 4  # BSRN maps RGB to RGB; out_channels is taken equal to in_channels
    scale = math.isqrt(int(up.shape[0]) // channels)
    if scale < 1 or scale * scale * channels != int(up.shape[0]) or num_feat % 16:
        return None
    config: dict[str, Any] = {"scale": scale, "num_feat": num_feat, "num_blocks": num_blocks}
    if channels != 3:
        config.update(in_channels=channels, out_channels=channels)
    return exact_fit(build, config, state_dict)
