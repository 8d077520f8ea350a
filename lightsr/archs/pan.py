"""PAN: Pixel Attention Network (Zhao, Kong, He, Qiao, Dong; ECCV Workshops 2020).

Written from ``specs/PAN.md`` (upstream: zhaohengyuan1/PAN, no license file). The network works on RGB in
**0..1**. ``arch_config`` keys: ``scale`` (2, 3 or 4), ``features`` (nf = 40), ``up_features`` (unf = 24),
``blocks`` (nb = 16), optionally ``in_channels`` / ``out_channels`` (3).

x2 and x3 use one nearest-neighbour upsampling stage (factor s); x4 uses two x2 stages, the second with its
own ``upconv2``/``att2``/``HRconv2``. The x2 and x3 checkpoints therefore have identical shapes: see
:func:`match_state_dict`. Key names equal the upstream ones, so :func:`convert_state_dict` renames nothing.

Example:
    >>> import torch
    >>> from lightsr.archs import pan
    >>> net = pan.build({"scale": 4, "features": 40, "up_features": 24, "blocks": 16})
    >>> net(torch.rand(1, 3, 7, 5)).shape
    torch.Size([1, 3, 28, 20])
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightsr.archs._common import ArchTraits, check_keys, exact_fit, positive_ints
from lightsr.errors import UnsupportedScaleError

__all__ = [
    "CONVERSION_SHRINKS",
    "PAN",
    "SCALES",
    "SCPA",
    "SKETCHES",
    "build",
    "convert_state_dict",
    "match_state_dict",
    "traits",
]

# Architecture sketches for the docs (docs/models.md), one per model of this family; from its spec.
SKETCHES: dict[str, str] = {
    "pan": """\
x ─ conv3x3 3→40 ─ [SCPA ×16 ─ conv3x3] + skip ─ (nearest ×2 ─ conv ─ pixel attention ─ conv) ×1 or ×2 ─ \
conv3x3 24→3 ─(+)─ y
x ─ bilinear ×s ───────────────────────────────────────────────────────────────────────────────────────┘
SCPA: two 20-channel branches (conv3x3 | pixel-attention conv), concat → conv1x1 → + input. Pixel attention:
x · sigmoid(conv1x1(x)). LeakyReLU 0.2; 0..1 input; x2/x3/x4.""",
}
# convert_state_dict keeps every upstream parameter (tests/test_manifest.py checks the count).
CONVERSION_SHRINKS: str | None = None

SCALES = (2, 3, 4)
_SLOPE = 0.2  # LeakyReLU slope used throughout PAN


class _PA(nn.Module):
    """Pixel attention: x * sigmoid(1x1 conv(x))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class _PAConv(nn.Module):
    """k4(k3(x) * sigmoid(k2(x)))."""

    def __init__(self, channels: int):
        super().__init__()
        self.k2 = nn.Conv2d(channels, channels, 1)
        self.k3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.k4 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k4(self.k3(x) * torch.sigmoid(self.k2(x)))


class SCPA(nn.Module):
    """Self-calibrated block with pixel attention: two half-width branches, 1x1 fusion, residual."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1_a = nn.Conv2d(channels, half, 1, bias=False)
        self.conv1_b = nn.Conv2d(channels, half, 1, bias=False)
        # A one-element Sequential only to keep the upstream key ``k1.0``.
        self.k1 = nn.Sequential(nn.Conv2d(half, half, 3, padding=1, bias=False))
        self.PAConv = _PAConv(half)
        self.conv3 = nn.Conv2d(half * 2, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.leaky_relu(self.conv1_a(x), _SLOPE)
        b = F.leaky_relu(self.conv1_b(x), _SLOPE)
        a = F.leaky_relu(self.k1(a), _SLOPE)
        b = F.leaky_relu(self.PAConv(b), _SLOPE)
        return self.conv3(torch.cat([a, b], dim=1)) + x


class PAN(nn.Module):
    """PAN on RGB in 0..1; output ``scale`` times larger (not clamped).

    Example:
        >>> import torch
        >>> PAN(scale=3, features=8, up_features=4, blocks=1)(torch.rand(1, 3, 5, 6)).shape
        torch.Size([1, 3, 15, 18])
    """

    def __init__(
        self,
        *,
        scale: int,
        features: int = 40,
        up_features: int = 24,
        blocks: int = 16,
        in_channels: int = 3,
        out_channels: int = 3,
    ):
        super().__init__()
        if scale not in SCALES:
            raise UnsupportedScaleError("pan", scale, SCALES)
        self.scale = scale
        self.conv_first = nn.Conv2d(in_channels, features, 3, padding=1)
        self.SCPA_trunk = nn.Sequential(*(SCPA(features) for _ in range(blocks)))
        self.trunk_conv = nn.Conv2d(features, features, 3, padding=1)
        self.upconv1 = nn.Conv2d(features, up_features, 3, padding=1)
        self.att1 = _PA(up_features)
        self.HRconv1 = nn.Conv2d(up_features, up_features, 3, padding=1)
        if scale == 4:
            self.upconv2 = nn.Conv2d(up_features, up_features, 3, padding=1)
            self.att2 = _PA(up_features)
            self.HRconv2 = nn.Conv2d(up_features, up_features, 3, padding=1)
        self.conv_last = nn.Conv2d(up_features, out_channels, 3, padding=1)

    @staticmethod
    def _stage(
        f: torch.Tensor, factor: int, upconv: nn.Module, att: nn.Module, hr: nn.Module
    ) -> torch.Tensor:
        f = upconv(F.interpolate(f, scale_factor=factor, mode="nearest"))
        f = F.leaky_relu(att(f), _SLOPE)
        return F.leaky_relu(hr(f), _SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv_first(x)
        f = f + self.trunk_conv(self.SCPA_trunk(f))
        if self.scale == 4:
            f = self._stage(f, 2, self.upconv1, self.att1, self.HRconv1)
            f = self._stage(f, 2, self.upconv2, self.att2, self.HRconv2)
        else:
            f = self._stage(f, self.scale, self.upconv1, self.att1, self.HRconv1)
        base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv_last(f) + base


def build(config: dict[str, Any]) -> PAN:
    """The PAN network for ``config`` (native range 0..1).

    Example:
        >>> build({"scale": 2, "features": 40, "up_features": 24, "blocks": 16}).scale
        2
    """
    example = {
        "scale": 4,
        "features": 40,
        "up_features": 24,
        "blocks": 16,
        "in_channels": 3,
        "out_channels": 3,
    }
    check_keys("PAN", config, example, {"scale": 4, "blocks": 16})
    positive_ints("PAN", {**example, **config}, example, {"scale": 4, "blocks": 16})
    return PAN(
        scale=int(config["scale"]),
        features=int(config.get("features", 40)),
        up_features=int(config.get("up_features", 24)),
        blocks=int(config.get("blocks", 16)),
        in_channels=int(config.get("in_channels", 3)),
        out_channels=int(config.get("out_channels", 3)),
    )


def traits(config: dict[str, Any]) -> ArchTraits:
    """Fully convolutional with padded convs: any input size works (down to 1x1).

    Example:
        >>> traits({"scale": 4}).size_multiple
        1
    """
    # Precision safety is measured per checkpoint and kept in its manifest record (``precision``).
    return ArchTraits(min_size=1, size_multiple=1)


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Upstream PAN tensors -> this module's: the keys are already identical.

    Example:
        >>> sd = build({"scale": 2, "features": 8, "up_features": 4, "blocks": 1}).state_dict()
        >>> convert_state_dict(sd, {}).keys() == sd.keys()
        True
    """
    return dict(state_dict)


_BLOCK_KEY = re.compile(r"^SCPA_trunk\.(\d+)\.conv3\.weight$")


def match_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The ``arch_config`` an upstream PAN state dict fits, read from its shapes, or ``None``.

    A checkpoint with a second upsampling stage (``upconv2``) is x4. **x2 and x3 checkpoints have identical
    keys and shapes**, so the scale of a single-stage checkpoint cannot be read from it: this returns
    ``scale`` 2 for both; a caller that knows the file is x3 (from its name or sha256) sets ``scale`` 3,
    and the tensors load unchanged.

    Example:
        >>> sd = build({"scale": 4, "features": 40, "up_features": 24, "blocks": 16}).state_dict()
        >>> match_state_dict(sd)
        {'scale': 4, 'features': 40, 'up_features': 24, 'blocks': 16, 'in_channels': 3, 'out_channels': 3}
    """
    try:
        first = state_dict["conv_first.weight"]
        up = state_dict["upconv1.weight"]
        last = state_dict["conv_last.weight"]
    except KeyError:
        return None
    numbers = sorted(int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k)))
    if not numbers or numbers != list(range(len(numbers))):
        return None
    if first.ndim != 4 or up.ndim != 4 or last.ndim != 4:
        return None
    config: dict[str, Any] = {
        "scale": 4 if "upconv2.weight" in state_dict else 2,
        "features": int(first.shape[0]),
        "up_features": int(up.shape[0]),
        "blocks": len(numbers),
        "in_channels": int(first.shape[1]),
        "out_channels": int(last.shape[0]),
    }
    if config["features"] % 2:
        return None
    return exact_fit(build, config, state_dict)
