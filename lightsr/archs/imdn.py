"""IMDN family: Information Multi-distillation Network (Hui, Gao, Yang, Wang, ACM MM 2019) and its relatives.

Written from the prose of ``shared/specs/IMDN.md``. One file holds every released variant, chosen by
``arch_config["variant"]``:

``"imdn"``     the paper model (IMDB blocks with contrast-aware channel attention, all block outputs fused);
               x2/x3/x4, 0..1 input.
``"rtc"``      IMDN-RTC (AI-in-RTC 2019): width 12, attention-free blocks, KAIR-style layout; 0..1 input.
``"rte"``      IMDN-RTE (AI-in-RTE 2020): stride-2 head, bias-free "large" blocks, pixel shuffle by
               2 x upscale; 0..255 input; needs even input sides (callers pad, see ``traits``).
``"ntire22"``  the NTIRE 2022 efficient-SR baseline (KAIR's simplified IMDN, 8 blocks); 0..1 input.

The other keys are ``num_feat`` (width), ``num_blocks`` and ``upscale`` (the output/input size ratio).
Module names follow the upstream checkpoint keys (after ``module.`` is stripped), so conversion is the
identity. The IMDN_AS ("any scale", same-size output) checkpoint is not supported.

Example:
    >>> import torch
    >>> from lightsr.archs import imdn
    >>> net = imdn.build({"variant": "imdn", "num_feat": 64, "num_blocks": 6, "upscale": 2}).eval()
    >>> net(torch.rand(1, 3, 8, 8)).shape
    torch.Size([1, 3, 16, 16])
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
    "CCA",
    "CONVERSION_SHRINKS",
    "IMDN",
    "IMDNRTE",
    "SKETCHES",
    "VARIANTS",
    "IMDModule",
    "IMDModuleLarge",
    "IMDNSequential",
    "SimplifiedIMDModule",
    "build",
    "convert_state_dict",
    "match_state_dict",
    "traits",
]

# Architecture sketches for the docs (docs/models.md), one per model of this family; from its spec.
SKETCHES: dict[str, str] = {
    "imdn": """\
x ─ conv3x3 3→64 ─ IMDB ×6 ─ concat(6×64) ─ conv1x1→64 ─ conv3x3 ─(+)─ conv3x3 64→3·s² ─ PixelShuffle×s
                 └────────────────────── long skip ─────────────────┘
IMDB: three conv3x3 steps, each splitting 64 channels into 16 kept (distilled) and 48 passed on; a last
      conv3x3 48→16; concat 4×16 → contrast-aware channel attention (CCA) → conv1x1 → + input
LeakyReLU 0.05; 0..1 input. Only the upsampler differs between x2, x3 and x4.""",
    "imdn-rtc": """\
x ─ conv3x3 3→12 ─ [speed-IMDB ×5 ─ conv1x1] + skip ─ conv3x3 12→12 ─ PixelShuffle×2
speed-IMDB: the IMDB distillation pattern at width 12 (3 kept, 9 passed on per step), no channel attention.
20 K parameters: the AI-in-RTC 2019 real-time entry. 0..1 input; x2 only.""",
    "imdn-rte": """\
x ─ conv3x3 stride 2, 3→20 ─ large-IMDB ×6 ─ conv3x3 ─(+)─ conv3x3 20→48 ─ PixelShuffle×4   (net x2: down 2, \
up 4)
large-IMDB: six ReLU conv steps keeping 5 channels each, concat → conv1x1 → + input.
Works at half resolution, so it is fast; odd input sizes are padded by one pixel and cropped back.
0..255 input (unlike the other IMDN checkpoints); x2 only.""",
    "imdn-ntire22": """\
x ─ conv3x3 3→64 ─ [IMD-block ×8 ─ conv3x3] + skip ─ conv3x3 64→48 ─ PixelShuffle×4
IMD-block: the IMDB distillation pattern (16 kept, 48 passed on) without channel attention, conv1x1 fusion,
+ input. The KAIR re-implementation used as the NTIRE 2022 efficient-SR baseline. 0..1 input; x4 only.""",
}
# convert_state_dict keeps every upstream parameter (tests/test_manifest.py checks the count).
CONVERSION_SHRINKS: str | None = None

VARIANTS = ("imdn", "rtc", "rte", "ntire22")
_SLOPE = 0.05


def _conv(cin: int, cout: int, k: int, *, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=bias)


def _lrelu(t: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(t, _SLOPE)


class CCA(nn.Module):
    """Contrast-aware channel attention: weights from per-channel (population std + mean), reduction 16."""

    def __init__(self, n: int, reduction: int = 16):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(n, n // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(n // reduction, n, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        # Population std with no epsilon, exactly as the checkpoints were trained (not torch.std's Bessel).
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return x * self.conv_du(std + mean)


class IMDModule(nn.Module):
    """Information multi-distillation block: keep the first n/4 channels of each step, refine the rest.

    With ``attention=True`` (paper IMDN) CCA precedes the 1x1 fusion ``c5``; without it (IMDN-RTC's
    "speed" block) the concatenation goes straight into ``c5``. Both add the block input at the end.
    """

    def __init__(self, n: int, attention: bool = True):
        super().__init__()
        self.d = n // 4
        self.r = n - self.d
        self.c1 = _conv(n, n, 3)
        self.c2 = _conv(self.r, n, 3)
        self.c3 = _conv(self.r, n, 3)
        self.c4 = _conv(self.r, self.d, 3)
        self.c5 = _conv(n, n, 1)
        self.cca = CCA(n) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1, r1 = torch.split(_lrelu(self.c1(x)), (self.d, self.r), dim=1)
        d2, r2 = torch.split(_lrelu(self.c2(r1)), (self.d, self.r), dim=1)
        d3, r3 = torch.split(_lrelu(self.c3(r2)), (self.d, self.r), dim=1)
        t = torch.cat([d1, d2, d3, self.c4(r3)], dim=1)
        if self.cca is not None:
            t = self.cca(t)
        return self.c5(t) + x


class IMDModuleLarge(nn.Module):
    """IMDN-RTE's block: five distillation steps with plain ReLU, every conv bias-free."""

    def __init__(self, n: int):
        super().__init__()
        d = self.d = n // 4
        r = self.r = n - d
        self.c1 = _conv(n, n, 3, bias=False)
        self.c2 = _conv(r, n, 3, bias=False)
        self.c3 = _conv(r, n, 3, bias=False)
        self.c4 = _conv(r, r, 3, bias=False)
        self.c5 = _conv(r - d, r - d, 3, bias=False)
        self.c6 = _conv(r - 2 * d, r - 2 * d, 3, bias=False)
        self.c7 = _conv(5 * d + r - 2 * d, n, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, r = self.d, self.r
        d1, r1 = torch.split(F.relu(self.c1(x)), (d, r), dim=1)
        d2, r2 = torch.split(F.relu(self.c2(r1)), (d, r), dim=1)
        d3, r3 = torch.split(F.relu(self.c3(r2)), (d, r), dim=1)
        d4, r4 = torch.split(F.relu(self.c4(r3)), (d, r - d), dim=1)
        d5, r5 = torch.split(F.relu(self.c5(r4)), (d, r - 2 * d), dim=1)
        o6 = F.relu(self.c6(r5))
        return self.c7(torch.cat([d1, d2, d3, d4, d5, o6], dim=1)) + x


class SimplifiedIMDModule(nn.Module):
    """The NTIRE 2022 baseline's block (KAIR layout): IMDB without attention, key names ``conv1.0``..."""

    def __init__(self, n: int):
        super().__init__()
        self.d = n // 4
        self.r = n - self.d
        self.conv1 = nn.Sequential(_conv(n, n, 3), nn.LeakyReLU(_SLOPE, inplace=True))
        self.conv2 = nn.Sequential(_conv(self.r, n, 3), nn.LeakyReLU(_SLOPE, inplace=True))
        self.conv3 = nn.Sequential(_conv(self.r, n, 3), nn.LeakyReLU(_SLOPE, inplace=True))
        self.conv4 = _conv(self.r, self.d, 3)
        self.conv1x1 = _conv(n, n, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1, r1 = torch.split(self.conv1(x), (self.d, self.r), dim=1)
        d2, r2 = torch.split(self.conv2(r1), (self.d, self.r), dim=1)
        d3, r3 = torch.split(self.conv3(r2), (self.d, self.r), dim=1)
        return x + self.conv1x1(torch.cat([d1, d2, d3, self.conv4(r3)], dim=1))


class IMDN(nn.Module):
    """The paper IMDN (0..1 RGB): shallow conv, chained IMDBs, 1x1 fusion of all blocks, skip, shuffle."""

    def __init__(self, num_feat: int = 64, num_blocks: int = 6, upscale: int = 4):
        super().__init__()
        self.num_blocks = num_blocks
        self.fea_conv = _conv(3, num_feat, 3)
        for i in range(1, num_blocks + 1):
            self.add_module(f"IMDB{i}", IMDModule(num_feat))
        self.c = nn.Sequential(
            nn.Conv2d(num_feat * num_blocks, num_feat, 1), nn.LeakyReLU(_SLOPE, inplace=True)
        )
        self.LR_conv = _conv(num_feat, num_feat, 3)
        self.upsampler = nn.Sequential(_conv(num_feat, 3 * upscale * upscale, 3), nn.PixelShuffle(upscale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fea_conv(x)
        outs = []
        b = f
        for i in range(1, self.num_blocks + 1):
            b = getattr(self, f"IMDB{i}")(b)
            outs.append(b)
        return self.upsampler(self.LR_conv(self.c(torch.cat(outs, dim=1))) + f)


class IMDNRTE(nn.Module):
    """IMDN-RTE (0..255 RGB): halve the resolution, run large blocks, pixel-shuffle by 2 x upscale.

    Odd input sides give a one-pixel-larger output; lightsr's engine pads even (``size_multiple=2``).
    """

    def __init__(self, num_feat: int = 20, num_blocks: int = 6, upscale: int = 2):
        super().__init__()
        self.num_blocks = num_blocks
        self.fea_conv = nn.Sequential(
            _conv(3, num_feat, 3),
            nn.ReLU(inplace=True),
            _conv(num_feat, num_feat, 3, bias=False, stride=2),
        )
        for i in range(1, num_blocks + 1):
            self.add_module(f"block{i}", IMDModuleLarge(num_feat))
        self.LR_conv = _conv(num_feat, num_feat, 1, bias=False)
        shuffle = 2 * upscale
        self.upsampler = nn.Sequential(_conv(num_feat, 3 * shuffle * shuffle, 3), nn.PixelShuffle(shuffle))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fea_conv(x)
        b = f
        for i in range(1, self.num_blocks + 1):
            b = getattr(self, f"block{i}")(b)
        return self.upsampler(self.LR_conv(b) + f)


class _Shortcut(nn.Module):
    """``x + sub(x)``; the attribute name ``sub`` is what the KAIR-layout checkpoints' keys use."""

    def __init__(self, sub: nn.Module):
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sub(x)


class IMDNSequential(nn.Module):
    """KAIR-layout IMDN (IMDN-RTC and the NTIRE 2022 baseline), 0..1 RGB, one flat ``model`` Sequential:
    head conv, shortcut around (blocks + tail conv), conv to 3*s*s channels, pixel shuffle.
    """

    def __init__(self, variant: str, num_feat: int, num_blocks: int, upscale: int):
        super().__init__()
        if variant == "rtc":
            blocks = [IMDModule(num_feat, attention=False) for _ in range(num_blocks)]
            tail = _conv(num_feat, num_feat, 1)
        else:
            blocks = [SimplifiedIMDModule(num_feat) for _ in range(num_blocks)]
            tail = _conv(num_feat, num_feat, 3)
        self.model = nn.Sequential(
            _conv(3, num_feat, 3),
            _Shortcut(nn.Sequential(*blocks, tail)),
            _conv(num_feat, 3 * upscale * upscale, 3),
            nn.PixelShuffle(upscale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


_EXAMPLE = {"num_feat": 64, "num_blocks": 6, "upscale": 4}


def _config(config: dict[str, Any]) -> tuple[str, int, int, int]:
    check_keys("imdn", config, (*_EXAMPLE, "variant"), _EXAMPLE, required=())
    variant = config.get("variant", "imdn")
    if variant not in VARIANTS:
        raise CheckpointError(
            f"imdn arch_config variant {variant!r} is unknown; use one of {', '.join(VARIANTS)}"
        )
    n, nb, s = positive_ints("imdn", config, ("num_feat", "num_blocks", "upscale"), _EXAMPLE)
    min_feat = 16 if variant == "imdn" else 4  # CCA's reduction of 16 needs at least 16 channels
    if n < min_feat or n % 4:
        raise CheckpointError(
            f"imdn arch_config out of range (num_feat a multiple of 4 and >= {min_feat}): {config!r}; "
            f"e.g. {_EXAMPLE!r}"
        )
    return variant, n, nb, s


def build(config: dict[str, Any]) -> nn.Module:
    """The IMDN-family network for ``config`` in its native range (see the module docstring)."""
    variant, n, nb, s = _config(config)
    if variant == "imdn":
        return IMDN(n, nb, s)
    if variant == "rte":
        return IMDNRTE(n, nb, s)
    return IMDNSequential(variant, n, nb, s)


def traits(config: dict[str, Any]) -> ArchTraits:
    """IMDN-RTE halves the input with a stride-2 conv, so it needs even sides; the others take any size."""
    variant = config.get("variant", "imdn")
    # Precision safety is measured per checkpoint and kept in its manifest record (``precision``).
    return ArchTraits(min_size=1, size_multiple=2 if variant == "rte" else 1)


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Identity: our module names are the upstream ones (``module.`` is already stripped by the caller)."""
    return dict(state_dict)


def _count(sd: dict[str, Any], pattern: str, start: int = 1) -> int:
    """How many consecutive block indices from ``start`` have a key of ``pattern``."""
    n = 0
    while pattern.format(start + n) in sd:
        n += 1
    return n


def _guess(sd: dict[str, Any]) -> dict[str, Any] | None:
    """A candidate arch_config from a few telltale keys; checked against the full key set afterwards."""
    if "IMDB1.c1.weight" in sd and "fea_conv.weight" in sd:
        variant, n, nb = "imdn", sd["fea_conv.weight"].shape[0], _count(sd, "IMDB{}.c1.weight")
        up, shuffle_per_scale = sd["upsampler.0.weight"].shape[0], 1
    elif "block1.c1.weight" in sd and "fea_conv.0.weight" in sd:
        variant, n, nb = "rte", sd["fea_conv.0.weight"].shape[0], _count(sd, "block{}.c1.weight")
        up, shuffle_per_scale = sd["upsampler.0.weight"].shape[0], 2
    elif "model.1.sub.0.c1.weight" in sd:
        variant, n, nb = "rtc", sd["model.0.weight"].shape[0], _count(sd, "model.1.sub.{}.c1.weight", 0)
        up, shuffle_per_scale = sd["model.2.weight"].shape[0], 1
    elif "model.1.sub.0.conv1.0.weight" in sd:
        nb = _count(sd, "model.1.sub.{}.conv1.0.weight", 0)
        variant, n = "ntire22", sd["model.0.weight"].shape[0]
        up, shuffle_per_scale = sd["model.2.weight"].shape[0], 1
    else:
        return None
    shuffle = math.isqrt(int(up) // 3)
    if 3 * shuffle * shuffle != int(up) or shuffle % shuffle_per_scale:
        return None
    scale = shuffle // shuffle_per_scale
    return {"variant": variant, "num_feat": int(n), "num_blocks": int(nb), "upscale": scale}


def match_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The arch_config of an upstream IMDN-family state dict, or None if it fits none of the variants.

    The variant is recognised from its key layout, width/blocks/scale from shapes (the upsampler's
    output channels give the scale); the guess is accepted only if the network it describes has exactly
    the checkpoint's keys and shapes.
    """
    try:
        config = _guess(state_dict)
    except (KeyError, AttributeError, IndexError, TypeError, ValueError):
        return None
    return None if config is None else exact_fit(build, config, state_dict)
