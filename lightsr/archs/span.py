"""SPAN: Swift Parameter-free Attention Network, NTIRE 2024 ESR winning entry (team 38, "SPAN30", 28 ch).

Written from ``../shared/specs/SPAN_NTIRE2024.md`` (a prose description of Amazingren/NTIRE2024_ESR @ 6404fa4,
``models/team38_SPAN.py``, MIT); no upstream code was copied. This is the challenge network (28 channels,
6 SPAB blocks, x4), not the paper's 48-channel SPAN, whose weights were never published in a repository.

Inference simplification (exact): upstream's ``Conv3XC`` layers are re-parameterisable convs whose
training-time branches (1x1 -> 3x3 -> 1x1 plus a skip) are folded into one 3x3 conv stored under
``<name>.eval_conv``. The checkpoint holds only those folded convs, so each becomes a plain
``nn.Conv2d(3x3, padding 1)`` here, and :func:`convert_state_dict` drops the ``.eval_conv`` part of the key
(``block_1.c1_r.eval_conv.weight`` -> ``block_1.c1_r.weight``). Nothing is merged numerically, so the
output is the same as upstream's eval mode, operation for operation.

Native range 0..1: the network subtracts the DIV2K RGB mean and multiplies by 255 inside, and its output
is already in 0..1 units (the mean is not added back). Any input size works (3x3 convs and 1x1 convs only).

Example:
    >>> import torch
    >>> from lightsr.archs import span
    >>> net = span.build({"scale": 4}).eval()
    >>> net(torch.rand(1, 3, 7, 5)).shape
    torch.Size([1, 3, 28, 20])
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
    "CONVERSION_SHRINKS",
    "SKETCHES",
    "SPAN",
    "build",
    "convert_state_dict",
    "match_state_dict",
    "traits",
]

# Architecture sketches for the docs (docs/models.md), one per model of this family; from its spec.
SKETCHES: dict[str, str] = {
    "span-ntire24": """\
x ─ (x − mean)·255 ─ conv3x3 3→28 ─ SPAB ×6 ─ conv3x3 ─ concat(first conv, last conv, block 1, block 6's \
first activation)
    ─ conv1x1 112→28 ─ conv3x3 28→48 ─ PixelShuffle×4
SPAB: three re-parameterised conv3x3 with SiLU; parameter-free attention (sigmoid(o) − 0.5) · (o + input).
The NTIRE 2024 efficient-SR winner's 28-channel entry (not the paper's 48-channel SPAN). 0..1 input; x4 \
only.""",
}
# convert_state_dict keeps every upstream parameter (tests/test_manifest.py checks the count).
CONVERSION_SHRINKS: str | None = None

# DIV2K RGB mean used by the challenge model: a constant of the code, not stored in the checkpoint.
RGB_MEAN = (0.4488, 0.4371, 0.4040)
RGB_RANGE = 255.0

_DEFAULTS: dict[str, Any] = {"scale": 4, "num_feat": 28, "num_blocks": 6}


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class SPAB(nn.Module):
    """Swift parameter-free attention block: three 3x3 convs, SiLU between, sigmoid(.)-0.5 attention.

    Returns the block output and the SiLU-activated output of its first conv (used by the network tail).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.c1_r = _conv3(channels, channels)
        self.c2_r = _conv3(channels, channels)
        self.c3_r = _conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a1 = F.silu(self.c1_r(x))
        o3 = self.c3_r(F.silu(self.c2_r(a1)))
        att = torch.sigmoid(o3) - 0.5
        return (o3 + x) * att, a1


class SPAN(nn.Module):
    """SPAN (NTIRE 2024 challenge form) on 0..1 RGB: N x 3 x H x W -> N x 3 x sH x sW.

    Example:
        >>> import torch
        >>> SPAN(scale=4).eval()(torch.rand(1, 3, 8, 8)).shape
        torch.Size([1, 3, 32, 32])
    """

    def __init__(self, scale: int = 4, num_feat: int = 28, num_blocks: int = 6):
        super().__init__()
        # Not persistent: the checkpoint does not carry it, and a strict load must not expect it.
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.num_blocks = num_blocks
        self.conv_1 = _conv3(3, num_feat)
        for i in range(1, num_blocks + 1):
            setattr(self, f"block_{i}", SPAB(num_feat))
        self.conv_2 = _conv3(num_feat, num_feat)
        self.conv_cat = nn.Conv2d(num_feat * 4, num_feat, 1)
        self.upsampler = nn.Sequential(
            nn.Conv2d(num_feat, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv_1((x - self.mean.to(x.dtype)) * RGB_RANGE)
        h, b1 = f, f
        for i in range(1, self.num_blocks + 1):
            # q: the last block's activated first conv, which the tail concatenates.
            h, q = getattr(self, f"block_{i}")(h)
            if i == 1:
                b1 = h
        g = self.conv_2(h)
        return self.upsampler(self.conv_cat(torch.cat([f, g, b1, q], dim=1)))


def _config(config: dict[str, Any]) -> dict[str, Any]:
    check_keys("SPAN", config, _DEFAULTS, {"scale": 4})
    c = {**_DEFAULTS, **config}
    if not all(isinstance(c[k], int) and c[k] >= 1 for k in _DEFAULTS):
        raise CheckpointError(f"SPAN arch_config values must be positive integers, got {config!r}")
    return c


def build(config: dict[str, Any]) -> SPAN:
    """The SPAN network for ``config`` (keys: scale, num_feat, num_blocks; RGB in and out).

    Example:
        >>> build({"scale": 4, "num_feat": 28}).conv_1.out_channels
        28
    """
    return SPAN(**_config(config))


def traits(config: dict[str, Any]) -> ArchTraits:
    """Any input size (convolutions only).

    Precision safety is measured per checkpoint and kept in its manifest record (``precision``).
    Activations stay below ~600 even on binary pixel noise (fp16 overflows at 65504).

    Example:
        >>> traits({"scale": 4}).min_size
        1
    """
    _config(config)
    return ArchTraits(min_size=1, size_multiple=1)


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Upstream keys to ours: ``<conv>.eval_conv.{weight,bias}`` -> ``<conv>.{weight,bias}``; others kept.

    Example:
        >>> import torch
        >>> convert_state_dict({"conv_1.eval_conv.bias": torch.zeros(28)}, {"scale": 4}).keys()
        dict_keys(['conv_1.bias'])
    """
    _config(config)
    return {k.replace(".eval_conv.", "."): v for k, v in state_dict.items()}


_BLOCK_KEY = re.compile(r"^block_(\d+)\.c1_r\.(?:eval_conv\.)?weight$")


def match_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The arch_config of a (deployed, re-parameterised) SPAN state dict, else ``None``.

    Also recognises an already converted one (keys without ``.eval_conv``).

    Example:
        >>> match_state_dict(build({"scale": 4}).state_dict())
        {'scale': 4, 'num_feat': 28, 'num_blocks': 6}
    """
    sd = {k.replace(".eval_conv.", "."): v for k, v in state_dict.items()}
    try:
        first = sd["conv_1.weight"]
        up = sd["upsampler.0.weight"]
    except KeyError:
        return None
    if first.ndim != 4 or up.ndim != 4:
        return None
    num_feat = int(first.shape[0])
    num_blocks = sum(1 for k in state_dict if _BLOCK_KEY.match(k))
    scale = math.isqrt(int(up.shape[0]) // 3)
    if num_blocks == 0 or scale < 1 or scale * scale * 3 != int(up.shape[0]):
        return None
    config: dict[str, Any] = {"scale": scale, "num_feat": num_feat, "num_blocks": num_blocks}
    return exact_fit(build, config, sd)
