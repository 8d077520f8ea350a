"""CARN-M: Cascading Residual Network, mobile variant (Ahn, Kang, Sohn; ECCV 2018).

Written from ``specs/CARN_M.md`` (upstream: nmhkahn/CARN-pytorch, MIT). The network works on RGB in
**0..1**; its mean shift (0.4488, 0.4371, 0.4040) is stored in the checkpoint as two frozen 1x1 convs.

**One upstream checkpoint, three lightsr models.** The official ``carn_m.pth`` is a single multi-scale
network: a shared body plus separate x2, x3 and x4 upsampling heads (414,811 parameters in all). lightsr
builds one *single-scale* module per manifest record: :func:`convert_state_dict` keeps the shared body and
only the head of ``config["scale"]``, renaming ``upsample.up{s}.body.N`` to ``upsample.N``, so the converted
file loads strictly into ``build(config)``. Per-scale parameter counts: x2 257,051; x3 303,451;
x4 294,171 (body 219,931 + head).

``arch_config`` keys: ``scale`` (2, 3 or 4), ``features`` (64), ``group`` (4: the grouped 3x3 convs of
the mobile variant). Only CARN-M is implemented; the full CARN (three distinct residual blocks per cascading
block, ungrouped) is recognised as *not* fitting by :func:`match_state_dict`.

Example:
    >>> import torch
    >>> from lightsr.archs import carn
    >>> net = carn.build({"scale": 3, "features": 64, "group": 4})
    >>> net(torch.rand(1, 3, 7, 5)).shape
    torch.Size([1, 3, 21, 15])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightsr.archs._common import ArchTraits, check_keys, exact_fit, positive_ints
from lightsr.errors import CheckpointError, UnsupportedScaleError

__all__ = [
    "CARNM",
    "CONVERSION_SHRINKS",
    "SCALES",
    "SKETCHES",
    "build",
    "convert_state_dict",
    "match_state_dict",
    "traits",
]

# Architecture sketches for the docs (docs/models.md), one per model of this family; from its spec.
SKETCHES: dict[str, str] = {
    "carn-m": """\
x ─ mean-shift ─ conv3x3 3→64 ─ cascading blocks ×3 (each: one efficient residual block applied three times,
    group conv 4, with 1x1 fusions of all earlier outputs) ─ upsampler of the requested scale ─ conv3x3 64→3 \
─ mean-shift
One checkpoint serves x2, x3 and x4 (separate upsampler heads, group conv 4, ReLU). 0..1 input.""",
}
# Why convert_state_dict keeps fewer parameters than the upstream file holds (None: it keeps all).
CONVERSION_SHRINKS: str | None = (
    "one checkpoint holds the x2, x3 and x4 heads; each converted file keeps only its own"
)

SCALES = (2, 3, 4)
# DIV2K RGB mean in 0..1, what upstream's MeanShift layers hold (also stored in the checkpoint).
RGB_MEAN = (0.4488, 0.4371, 0.4040)


class _MeanShift(nn.Module):
    """A frozen 1x1 conv adding ``sign * mean`` per channel (identity weight); values come from the file."""

    def __init__(self, sign: float):
        super().__init__()
        self.shifter = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.shifter.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.shifter.bias.copy_(sign * torch.tensor(RGB_MEAN))
        self.shifter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shifter(x)


class _ConvReLU(nn.Module):
    """1x1 fusion conv + ReLU (upstream ``BasicBlock``; the ``body`` wrapper keeps the key names)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _EfficientResidual(nn.Module):
    """Grouped 3x3, ReLU, grouped 3x3, ReLU, 1x1; output ReLU(body(x) + x)."""

    def __init__(self, channels: int, group: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=group),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, groups=group),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + x)


class _CascadingBlock(nn.Module):
    """One residual block ``b1`` applied three times with shared weights, cascaded through 1x1 fusions."""

    def __init__(self, channels: int, group: int):
        super().__init__()
        self.b1 = _EfficientResidual(channels, group)
        self.c1 = _ConvReLU(channels * 2, channels)
        self.c2 = _ConvReLU(channels * 3, channels)
        self.c3 = _ConvReLU(channels * 4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x
        o = x
        for fuse in (self.c1, self.c2, self.c3):
            c = torch.cat([c, self.b1(o)], dim=1)
            o = fuse(c)
        return o


def _upsampler(scale: int, channels: int, group: int) -> nn.Sequential:
    # ReLU sits between each conv and its pixel shuffle, as upstream; x4 is two x2 stages.
    def stage(factor: int) -> list[nn.Module]:
        conv = nn.Conv2d(channels, channels * factor * factor, 3, padding=1, groups=group)
        return [conv, nn.ReLU(inplace=True), nn.PixelShuffle(factor)]

    if scale == 4:
        return nn.Sequential(*stage(2), *stage(2))
    return nn.Sequential(*stage(scale))


class CARNM(nn.Module):
    """Single-scale CARN-M on RGB in 0..1; output ``scale`` times larger (not clamped).

    Example:
        >>> import torch
        >>> CARNM(scale=2)(torch.rand(1, 3, 8, 8)).shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(self, *, scale: int, features: int = 64, group: int = 4):
        super().__init__()
        if scale not in SCALES:
            raise UnsupportedScaleError("carn-m", scale, SCALES)
        self.scale = scale
        self.sub_mean = _MeanShift(-1.0)
        self.add_mean = _MeanShift(+1.0)
        self.entry = nn.Conv2d(3, features, 3, padding=1)
        self.b1 = _CascadingBlock(features, group)
        self.b2 = _CascadingBlock(features, group)
        self.b3 = _CascadingBlock(features, group)
        self.c1 = _ConvReLU(features * 2, features)
        self.c2 = _ConvReLU(features * 3, features)
        self.c3 = _ConvReLU(features * 4, features)
        self.upsample = _upsampler(scale, features, group)
        self.exit = nn.Conv2d(features, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = o = self.entry(self.sub_mean(x))
        for block, fuse in ((self.b1, self.c1), (self.b2, self.c2), (self.b3, self.c3)):
            c = torch.cat([c, block(o)], dim=1)
            o = fuse(c)
        return self.add_mean(self.exit(self.upsample(o)))


def build(config: dict[str, Any]) -> CARNM:
    """The single-scale CARN-M network for ``config`` (native range 0..1).

    Example:
        >>> build({"scale": 4, "features": 64, "group": 4}).scale
        4
    """
    example = {"scale": 4, "features": 64, "group": 4}
    check_keys("CARN-M", config, example, example)
    positive_ints("CARN-M", {**example, **config}, example, example)
    return CARNM(
        scale=int(config["scale"]),
        features=int(config.get("features", 64)),
        group=int(config.get("group", 4)),
    )


def traits(config: dict[str, Any]) -> ArchTraits:
    """Fully convolutional with padded convs: any input size works (down to 1x1).

    Example:
        >>> traits({"scale": 2}).min_size
        1
    """
    # Measured on Set5 (CPU, whole network cast): activations stay below 3 (0..1 inputs); Y-PSNR vs fp32:
    # fp16 -0.002 dB at worst, bf16 -0.015 dB.
    return ArchTraits(min_size=1, size_multiple=1, fp16_safe=True, bf16_safe=True)


def _head_prefix(state_dict: dict[str, torch.Tensor], scale: int) -> str | None:
    """Key prefix of the x``scale`` head: ``upsample.up{s}.body.`` (multi-scale upstream),
    ``upsample.up.body.`` (single-scale upstream) or ``upsample.`` (already converted)."""
    for prefix in (f"upsample.up{scale}.body.", "upsample.up.body.", "upsample."):
        if f"{prefix}0.weight" in state_dict:
            return prefix
    return None


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Keep the shared body and only the ``config["scale"]`` head, renamed ``upsample.up{s}.body.N`` ->
    ``upsample.N``.

    The other scales' heads are dropped, so the result loads strictly into ``build(config)``. A single-scale
    upstream checkpoint (``upsample.up.body.N``) and an already converted dict (``upsample.N``) also work.

    Example:
        >>> import torch
        >>> full = {"entry.weight": torch.zeros(1), "upsample.up2.body.0.weight": torch.zeros(1),
        ...         "upsample.up4.body.0.weight": torch.zeros(2),
        ...         "upsample.up4.body.3.weight": torch.zeros(3)}
        >>> sorted(convert_state_dict(full, {"scale": 4}))
        ['entry.weight', 'upsample.0.weight', 'upsample.3.weight']
    """
    scale = int(config["scale"])
    prefix = _head_prefix(state_dict, scale)
    if prefix is None:
        heads = sorted({k.split(".")[1] for k in state_dict if k.startswith("upsample.")})
        raise CheckpointError(
            f"this CARN checkpoint has no x{scale} upsampling head (heads found: {heads or 'none'}); "
            "load it with a scale it was trained for"
        )
    out = {k: v for k, v in state_dict.items() if not k.startswith("upsample.")}
    out.update({f"upsample.{k[len(prefix) :]}": v for k, v in state_dict.items() if k.startswith(prefix)})
    return out


def match_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The ``arch_config`` an upstream CARN-M state dict fits, or ``None`` (full CARN, other families).

    The official multi-scale checkpoint holds x2, x3 and x4 heads; for it this returns the config of its
    **x4** model (the largest head; convert it with ``scale`` 2 or 3 for the others, see the module notes).
    A single-scale checkpoint (upstream ``multi_scale=False``, or a dict converted by lightsr) returns its own
    scale.

    Example:
        >>> sd = build({"scale": 3, "features": 64, "group": 4}).state_dict()
        >>> match_state_dict(sd)
        {'scale': 3, 'features': 64, 'group': 4}
    """
    required = ("sub_mean.shifter.weight", "add_mean.shifter.weight", "entry.weight", "b1.b1.body.0.weight")
    if not all(k in state_dict for k in required) or "b1.b2.body.0.weight" in state_dict:
        return None  # the full CARN has three distinct residual blocks (b1, b2, b3) per cascading block
    entry, grouped = state_dict["entry.weight"], state_dict["b1.b1.body.0.weight"]
    if entry.ndim != 4 or grouped.ndim != 4 or grouped.shape[1] == 0:
        return None
    features = int(entry.shape[0])
    group, rem = divmod(features, int(grouped.shape[1]))
    if rem:
        return None
    heads = [s for s in SCALES if f"upsample.up{s}.body.0.weight" in state_dict]
    # A single head: upstream single-scale (upsample.up.body.N) or a lightsr-converted dict (upsample.N).
    single = next((p for p in ("upsample.up.body.", "upsample.") if f"{p}0.weight" in state_dict), None)
    if heads:
        scale = max(heads)
    elif single is None:
        return None
    elif f"{single}3.weight" in state_dict:
        scale = 4
    else:
        ratio = int(state_dict[f"{single}0.weight"].shape[0]) // features
        scale = {4: 2, 9: 3}.get(ratio, 0)
        if not scale:
            return None
    config: dict[str, Any] = {"scale": scale, "features": features, "group": group}
    # Every head the file holds must fit exactly, and nothing may be left over.
    prefixes = [f"upsample.up{s}.body." for s in heads] or [single]
    if any(k.startswith("upsample.") and not k.startswith(tuple(prefixes)) for k in state_dict):
        return None
    for s in heads or [scale]:
        if not _fits(state_dict, {**config, "scale": s}):
            return None
    return config


def _fits(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> bool:
    """The head for ``config``'s scale, converted, fits the network exactly."""
    return exact_fit(build, config, convert_state_dict(state_dict, config)) is not None
