"""RFDN: Residual Feature Distillation Network (Liu, Tang, Wu, ECCV-W 2020), the AIM-2020 "E-RFDN".

Written from the prose of ``shared/specs/RFDN.md``. Module names follow the upstream checkpoint keys
(``fea_conv``, ``B1``..``B4``, ``c.0``, ``LR_conv``, ``upsampler.0``), so conversion is the identity.
The network works on 0..255 RGB (the manifest's ``input_range``; ``NativeRange`` adapts it to 0..1).

``arch_config`` keys: ``num_feat`` (width, 50), ``num_blocks`` (RFDB count, 4), ``upscale`` (2, 3 or 4;
only x4 weights exist).

Example:
    >>> import torch
    >>> from lightsr.archs import rfdn
    >>> net = rfdn.build({"num_feat": 50, "num_blocks": 4, "upscale": 4}).eval()
    >>> net(torch.rand(1, 3, 16, 16) * 255).shape
    torch.Size([1, 3, 64, 64])
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightsr.archs._common import ArchTraits, check_keys, exact_fit, positive_ints
from lightsr.errors import CheckpointError

__all__ = [
    "CONVERSION_SHRINKS",
    "ESA",
    "RFDB",
    "RFDN",
    "SKETCHES",
    "build",
    "convert_state_dict",
    "match_state_dict",
    "traits",
]

# Architecture sketches for the docs (docs/models.md), one per model of this family; from its spec.
SKETCHES: dict[str, str] = {
    "rfdn": """\
x ─ conv3x3 3→50 ─ RFDB ─ RFDB ─ RFDB ─ RFDB ─ concat(4×50) ─ conv1x1→50 ─ conv3x3 ─(+)─ conv3x3 50→48 ─ \
PixelShuffle×4
                 └──────────────────────────────── long skip ───────────────────────────┘
RFDB: three steps of [conv1x1 keeps 25 channels (distilled) | conv3x3 + identity refines 50 (passed on)],
      conv3x3 50→25, concat 100 → conv1x1 → ESA (enhanced spatial attention: strided conv, max-pool, sigmoid \
mask)
LeakyReLU 0.05; the checkpoint works in 0..255 (lightsr's wrapper scales from and to 0..1).""",
}
# convert_state_dict keeps every upstream parameter (tests/test_manifest.py checks the count).
CONVERSION_SHRINKS: str | None = None

_SLOPE = 0.05
# ESA's stride-2 unpadded 3x3 conv then 7x7/stride-3 max-pool need at least 15 px per side (15 -> 7 -> 1).
_MIN_SIZE = 15
# ESA's coarse grid: stride 2 (conv) x stride 3 (pool).
_ESA_STRIDE = 6


def _act(t: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(t, _SLOPE)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=(k - 1) // 2)


class ESA(nn.Module):
    """Enhanced spatial attention: a coarse (stride 2, max-pooled) branch gates the input per pixel."""

    def __init__(self, n: int):
        super().__init__()
        f = n // 4
        self.conv1 = nn.Conv2d(n, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv_max = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv3_ = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, n, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)
        p = F.max_pool2d(self.conv2(a), kernel_size=7, stride=3)
        p = F.relu(self.conv_max(p))
        p = F.relu(self.conv3(p))
        p = self.conv3_(p)
        p = F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False)
        m = torch.sigmoid(self.conv4(p + self.conv_f(a)))
        return x * m


class RFDB(nn.Module):
    """Residual feature distillation block: three distill/refine steps, 1x1 fusion, then ESA."""

    def __init__(self, n: int):
        super().__init__()
        d = n // 2
        self.c1_d = _conv(n, d, 1)
        self.c1_r = _conv(n, n, 3)
        self.c2_d = _conv(n, d, 1)
        self.c2_r = _conv(n, n, 3)
        self.c3_d = _conv(n, d, 1)
        self.c3_r = _conv(n, n, 3)
        self.c4 = _conv(n, d, 3)
        self.c5 = _conv(4 * d, n, 1)
        self.esa = ESA(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = _act(self.c1_d(x))
        r1 = _act(self.c1_r(x) + x)  # upstream adds the shallow residual before the activation
        d2 = _act(self.c2_d(r1))
        r2 = _act(self.c2_r(r1) + r1)
        d3 = _act(self.c3_d(r2))
        r3 = _act(self.c3_r(r2) + r2)
        r4 = _act(self.c4(r3))
        # No block-level residual: the block's output is the ESA output.
        return self.esa(self.c5(torch.cat([d1, d2, d3, r4], dim=1)))


class RFDN(nn.Module):
    """E-RFDN on 0..255 RGB: shallow conv, chained RFDBs, fusion of all block outputs, pixel shuffle."""

    def __init__(self, num_feat: int = 50, num_blocks: int = 4, upscale: int = 4):
        super().__init__()
        self.num_blocks = num_blocks
        self.fea_conv = _conv(3, num_feat, 3)
        for i in range(1, num_blocks + 1):
            self.add_module(f"B{i}", RFDB(num_feat))
        self.c = nn.Sequential(nn.Conv2d(num_feat * num_blocks, num_feat, 1), nn.LeakyReLU(_SLOPE))
        self.LR_conv = _conv(num_feat, num_feat, 3)
        self.upsampler = nn.Sequential(_conv(num_feat, 3 * upscale * upscale, 3), nn.PixelShuffle(upscale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fea_conv(x)
        outs = []
        b = f
        for i in range(1, self.num_blocks + 1):
            b = getattr(self, f"B{i}")(b)
            outs.append(b)
        lr = self.LR_conv(self.c(torch.cat(outs, dim=1))) + f
        return self.upsampler(lr)


_EXAMPLE = {"num_feat": 50, "num_blocks": 4, "upscale": 4}


def _config(config: dict[str, Any]) -> tuple[int, int, int]:
    check_keys("rfdn", config, _EXAMPLE, _EXAMPLE, required=())
    n, nb, s = positive_ints("rfdn", config, ("num_feat", "num_blocks", "upscale"), _EXAMPLE)
    if n < 4 or n % 2:
        raise CheckpointError(
            f"rfdn arch_config out of range (even num_feat >= 4, num_blocks >= 1, upscale >= 1): {config!r}"
        )
    return n, nb, s


def build(config: dict[str, Any]) -> nn.Module:
    """The RFDN network for ``config`` (0..255 in and out)."""
    n, nb, s = _config(config)
    return RFDN(num_feat=n, num_blocks=nb, upscale=s)


def traits(config: dict[str, Any]) -> ArchTraits:
    """ESA needs 15 px per side; fp16/bf16 safety is left to the precision tests' defaults."""
    return ArchTraits(min_size=_MIN_SIZE, size_multiple=1, tile_align=_ESA_STRIDE)


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Identity: our module names are the upstream ones."""
    return dict(state_dict)


def match_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The arch_config of an upstream RFDN state dict, or None if it is not exactly one.

    Width, block count and scale are read from shapes and key names; the guess is accepted only if the
    network it describes has exactly the same keys and shapes (so e.g. BSRN's look-alike keys are rejected).
    """
    try:
        n = int(state_dict["fea_conv.weight"].shape[0])
        nb = 0
        while f"B{nb + 1}.c1_d.weight" in state_dict:
            nb += 1
        up = int(state_dict["upsampler.0.weight"].shape[0])
    except (KeyError, AttributeError, IndexError):
        return None
    s = math.isqrt(max(up, 0) // 3)
    if 3 * s * s != up:
        return None
    return exact_fit(build, {"num_feat": n, "num_blocks": nb, "upscale": s}, state_dict)
