"""FDIWN: Feature Distillation Interaction Weighting Network (Gao et al., AAAI 2022), x2 / x3 / x4.

Written from ``specs/FDIWN.md`` (prose description of IVIPLab/FDIWN @ fa93977); no upstream code copied.
The network works on RGB in **0..255** and returns 0..255 (the zoo's ``NativeRange`` adapts it to 0..1).

Module names follow the upstream checkpoint keys (``Sub_mean``, ``Li1.MY1.srb1.body.0`` ...), so a
converted state dict loads with ``strict=True``.

Spec-to-code notes
------------------
* **Weight-norm is folded at conversion time.** Upstream wraps the 1x1 / 3x3 convolutions of every SRBW1,
  SRBW and SRBW2 block (``body.0``, ``body.2``, ``body.3``: 198 convolutions per checkpoint) in the legacy
  ``torch.nn.utils.weight_norm`` (dim 0) and stores ``X.weight_g`` (out x 1 x 1 x 1) and ``X.weight_v``.
  :func:`convert_state_dict` replaces each pair by ``X.weight = g * v / ||v||`` (the norm per output channel
  over all other dims), computed in float64 and cast to float32; ``X.bias`` is kept. The module therefore
  uses plain ``nn.Conv2d`` and has fewer stored numbers than the checkpoint (the g's disappear: 629,176 ->
  623,092 for x2); the manifest's ``params`` is the upstream count, the one the paper quotes. Inference is
  unchanged up to the float32 rounding of the folded weights (measured <= 1.2e-5 in 0..255 units on image
  crops, evaluating both in float64).
* ``Sub_mean`` / ``Add_mean`` are ordinary learnable 1x1 convolutions with bias whose stored weights drifted
  away from the identity during training (upstream never froze them), so the mean is not hard-coded.
* ``Li1``, ``Li2`` and ``Li3`` are each applied twice with shared weights (one set of keys each); the global
  sum starts from the output of the first ``Li1`` call, not from the head features.
* The shallow ``conv2`` branch reads the raw input for x2 and x3 but ``Sub_mean(x)`` for x4
  (``arch_config["shallow_input"]`` = ``"raw"`` or ``"mean_shifted"``).
* CoffConv's lower branch uses the population standard deviation over H, W (no eps); both of its branches
  end in ReLU then Sigmoid, so every coefficient lies in [0.5, 1).
* Scale-dependent widths (hidden widths of SRBW1 / SRBW / SRBW2, the upsampler width) come from
  ``arch_config``; the values for the released checkpoints are in :data:`OFFICIAL_CONFIGS`.
* Parameter-free members upstream never calls (a LeakyReLU, a bilinear ``nn.Upsample``, a second channel
  shuffle) are left out; they hold no tensors.

Example:
    >>> import torch
    >>> from lightsr.archs import fdiwn
    >>> net = fdiwn.build({"scale": 2}).eval()
    >>> with torch.no_grad():
    ...     net(torch.rand(1, 3, 8, 8) * 255).shape
    torch.Size([1, 3, 16, 16])
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from lightsr.archs._common import ArchTraits, exact_fit
from lightsr.errors import CheckpointError, UnsupportedScaleError

__all__ = [
    "CONVERSION_SHRINKS",
    "FDIWN",
    "OFFICIAL_CONFIGS",
    "SKETCHES",
    "build",
    "convert_state_dict",
    "fold_weight_norm",
    "match_state_dict",
    "traits",
]

# Architecture sketches for the docs (docs/models.md), one per model of this family; from its spec.
SKETCHES: dict[str, str] = {
    "fdiwn": """\
x ─ mean-shift conv1x1 ─ conv3x3 3→24 ─ FDIWG groups Li1, Li1, Li2, Li3, Li2, Li3 (three groups, weights \
shared,
    each output added to a running sum) ─ conv ─ PixelShuffle×s ─(+)─ mean-shift conv1x1 ─ y
                         └─ a second conv ─ PixelShuffle×s branch from the input ─┘
FDIWG: feature-distillation interaction weighting blocks (weight-normalised wide residual blocks, coefficient
       convs from mean and standard deviation, shuffle attention). 0..255 input; x2/x3/x4.""",
}
# Why convert_state_dict keeps fewer parameters than the upstream file holds (None: it keeps all).
CONVERSION_SHRINKS: str | None = (
    "weight-norm folded: each weight_g (one number per output channel) disappears into the weight"
)

# The hyper-parameters of the three released checkpoints (specs/FDIWN.md, "Scale-dependent hyper-parameters").
OFFICIAL_CONFIGS: dict[int, dict[str, Any]] = {
    s: {
        "scale": s,
        "channels": 24,
        "srbw1_hidden": 60 if s == 4 else 48,
        "srbw_hidden": 54 if s == 4 else 48,
        "srbw2_hidden": 108 if s == 4 else 96,
        "up_channels": 32 if s == 4 else 64,
        "shallow_input": "mean_shifted" if s == 4 else "raw",
    }
    for s in (2, 3, 4)
}
_SHALLOW_INPUTS = ("raw", "mean_shifted")
_SA_GROUPS = 6


def _resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill missing keys from the official configuration of ``config["scale"]`` and check the result."""
    if "scale" not in config:
        raise CheckpointError("FDIWN arch_config needs a 'scale' (2, 3 or 4), e.g. {'scale': 4}")
    scale = config["scale"]
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise CheckpointError(
            f"FDIWN arch_config 'scale' must be a positive integer (2, 3 or 4), got {scale!r}"
        )
    if scale not in OFFICIAL_CONFIGS:
        raise UnsupportedScaleError("fdiwn", scale, tuple(OFFICIAL_CONFIGS))
    unknown = sorted(set(config) - set(OFFICIAL_CONFIGS[scale]))
    if unknown:
        raise CheckpointError(
            f"unknown FDIWN arch_config key(s) {unknown}; allowed: {sorted(OFFICIAL_CONFIGS[scale])}"
        )
    cfg = {**OFFICIAL_CONFIGS[scale], **config}
    for key in ("channels", "srbw1_hidden", "srbw_hidden", "srbw2_hidden", "up_channels"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise CheckpointError(f"FDIWN arch_config {key!r} must be a positive integer, got {cfg[key]!r}")
    if cfg["channels"] % 24:
        # Shuffle attention needs 12 | C, the half-width branches 2 | C, CoffConv 8 | C, grouped convs 4 | C.
        raise CheckpointError(
            f"FDIWN 'channels' must be a multiple of 24 (the released models use 24), got {cfg['channels']}"
        )
    if cfg["shallow_input"] not in _SHALLOW_INPUTS:
        raise CheckpointError(
            f"FDIWN 'shallow_input' must be one of {_SHALLOW_INPUTS}, got {cfg['shallow_input']!r}"
        )
    return cfg


def _conv(cin: int, cout: int, k: int, *, bias: bool = True, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias, groups=groups)


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class _Scale(nn.Module):
    """One learnable scalar (key ``scale``) that multiplies the input."""

    def __init__(self, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _ShuffleAttention(nn.Module):
    """SA-Net shuffle attention with 6 groups: half of each group gets channel, half spatial attention."""

    def __init__(self, channels: int, groups: int = _SA_GROUPS):
        super().__init__()
        self.groups = groups
        k = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.zeros(1, k, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, k, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, k, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, k, 1, 1))
        self.gn = nn.GroupNorm(k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b * self.groups, c // self.groups, h, w)
        x0, x1 = x.chunk(2, dim=1)
        xn = x0 * torch.sigmoid(self.cweight * x0.mean(dim=(2, 3), keepdim=True) + self.cbias)
        xs = x1 * torch.sigmoid(self.sweight * self.gn(x1) + self.sbias)
        out = torch.cat([xn, xs], dim=1).reshape(b, c, h, w)
        return _channel_shuffle(out, 2)

    def inference_form(self) -> nn.Module:
        """The same function without splitting the channel axis (which channels-last cannot view).

        Each channel c is gated by its own statistics: ``x * sigmoid(a_c * (x - mean_c) + p_c * mean_c
        + q_c)`` with ``a_c = r_c / sqrt(var_c + eps)``: the channel half of a group has ``r = 0``
        (``cweight * mean + cbias``), the spatial half ``p = 0`` (the GroupNorm of one channel per
        group, folded with ``sweight`` and ``sbias``). Used by lightsr's inference rewrite.
        """
        k = self.cweight.numel()
        cw, cb, sw, sb = (t.detach().reshape(k) for t in (self.cweight, self.cbias, self.sweight, self.sbias))
        gw, gb = self.gn.weight.detach(), self.gn.bias.detach()
        zeros = torch.zeros_like(cw)
        return _ChannelGate(
            mean_coef=torch.cat([cw, zeros]).repeat(self.groups),
            const=torch.cat([cb, sw * gb + sb]).repeat(self.groups),
            norm_coef=torch.cat([zeros, sw * gw]).repeat(self.groups),
            eps=self.gn.eps,
        )


class _ChannelGate(nn.Module):
    """Shuffle attention in per-channel form (see :meth:`_ShuffleAttention.inference_form`).

    ``shuffle`` False: the final channel shuffle was folded into the producer (:func:`_fold_shuffle`).
    """

    def __init__(
        self,
        mean_coef: torch.Tensor,
        const: torch.Tensor,
        norm_coef: torch.Tensor,
        eps: float,
        shuffle: bool = True,
    ):
        super().__init__()
        self.register_buffer("mean_coef", mean_coef.reshape(1, -1, 1, 1).clone())
        self.register_buffer("const", const.reshape(1, -1, 1, 1).clone())
        self.register_buffer("norm_coef", norm_coef.reshape(1, -1, 1, 1).clone())
        self.eps = eps
        self.shuffle = shuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
        # a * (x - mean), not a * x - a * mean: a is large where a channel's variance is small, and
        # in bf16 the two products would cancel to rounding noise.
        gain = self.norm_coef * torch.rsqrt(var + self.eps)
        logits = (x - mean) * gain + (self.mean_coef * mean + self.const)
        out = x * torch.sigmoid(logits)
        return _channel_shuffle(out, 2) if self.shuffle else out


def _shuffle_order(channels: int, groups: int) -> torch.Tensor:
    """Input channel of each output channel of ``_channel_shuffle`` (read off the function itself)."""
    return _channel_shuffle(torch.arange(channels).view(1, channels, 1, 1), groups).flatten()


def _fold_shuffle(conv: nn.Conv2d, gate: _ChannelGate) -> tuple[nn.Conv2d, _ChannelGate]:
    """``shuffle(gate(conv(x)))`` -> ``gate'(conv'(x))``: the gate works channel by channel, so the
    shuffle can permute the conv's output channels and the gate's coefficients instead of the feature map.
    """
    order = _shuffle_order(conv.out_channels, 2)
    new_conv = copy.deepcopy(conv)
    with torch.no_grad():
        new_conv.weight.copy_(conv.weight[order])
        if conv.bias is not None:
            new_conv.bias.copy_(conv.bias[order])
    flat = (gate.mean_coef.flatten()[order], gate.const.flatten()[order], gate.norm_coef.flatten()[order])
    return new_conv, _ChannelGate(*flat, eps=gate.eps, shuffle=False)


class _GatedBlock(nn.Module):
    """Base of the residual blocks whose ``body`` (ending in a convolution) feeds a shuffle attention."""

    body: nn.Sequential
    SAlayer: nn.Module

    def inference_form(self) -> nn.Module:
        """This block with its shuffle attention as a per-channel gate and the gate's channel shuffle
        folded into the last convolution of ``body`` (its output channels permuted): one full-size copy
        less per block. Used by lightsr's inference rewrite.
        """
        if not isinstance(self.SAlayer, _ShuffleAttention):
            return self
        form = copy.deepcopy(self)
        form.body[-1], form.SAlayer = _fold_shuffle(self.body[-1], self.SAlayer.inference_form())
        return form


class _SRBW1(_GatedBlock):
    """Residual block, width n -> n: 1x1 expand, ReLU, 1x1 squeeze to n/2, 3x3 back to n, attention."""

    def __init__(self, n: int, hidden: int):
        super().__init__()
        self.res_scale = _Scale(1)
        self.x_scale = _Scale(1)
        self.body = nn.Sequential(
            _conv(n, hidden, 1), nn.ReLU(inplace=True), _conv(hidden, n // 2, 1), _conv(n // 2, n, 3)
        )
        self.SAlayer = _ShuffleAttention(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_scale(self.SAlayer(self.body(x))) + self.x_scale(x)


class _SRBW(_GatedBlock):
    """Residual block, width n -> 2n, with a plain 3x3 convolution on the skip path."""

    def __init__(self, n: int, hidden: int):
        super().__init__()
        self.res_scale = _Scale(1)
        self.x_scale = _Scale(1)
        self.conv = _conv(n, 2 * n, 3)
        self.body = nn.Sequential(
            _conv(n, hidden, 1), nn.ReLU(inplace=True), _conv(hidden, n, 1), _conv(n, 2 * n, 3)
        )
        self.SAlayer = _ShuffleAttention(2 * n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_scale(self.SAlayer(self.body(x))) + self.x_scale(self.conv(x))


class _SRBW2(_GatedBlock):
    """Residual block, width n -> n/2, with a plain 3x3 convolution on the skip path."""

    def __init__(self, n: int, hidden: int):
        super().__init__()
        self.res_scale = _Scale(1)
        self.x_scale = _Scale(1)
        self.body = nn.Sequential(
            _conv(n, hidden, 1), nn.ReLU(inplace=True), _conv(hidden, n // 2, 1), _conv(n // 2, n // 2, 3)
        )
        self.SAlayer = _ShuffleAttention(n // 2)
        self.conv = _conv(n, n // 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_scale(self.SAlayer(self.body(x))) + self.x_scale(self.conv(x))


class _CoffConv(nn.Module):
    """Per-channel coefficients in [0.5, 1): mean of an average-pool branch and a std-pool branch."""

    def __init__(self, n: int):
        super().__init__()
        r = n // 8
        self.upper_branch = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            _conv(n, r, 1),
            nn.ReLU(inplace=True),
            _conv(r, n, 1),
            nn.ReLU(inplace=True),
            nn.Sigmoid(),
        )
        self.lower_branch = nn.Sequential(
            _conv(n, r, 1), nn.ReLU(inplace=True), _conv(r, n, 1), nn.ReLU(inplace=True), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        # Population std without eps, as upstream: it must match the trained statistics.
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return (self.upper_branch(x) + self.lower_branch(std)) / 2


class _MY(nn.Module):
    """FDIWB (upstream ``MY``): two interacting half-width distillation paths with weighted fusion."""

    def __init__(self, n: int, cfg: dict[str, Any]):
        super().__init__()
        half = n // 2
        self.srb1 = _SRBW1(n, cfg["srbw1_hidden"])
        self.srb2 = _SRBW1(n, cfg["srbw1_hidden"])
        self.rb1 = _SRBW(half, cfg["srbw_hidden"])
        self.rb2 = _SRBW(half, cfg["srbw_hidden"])
        self.A1_coffconv = _CoffConv(n)
        self.B1_coffconv = _CoffConv(n)
        self.A2_coffconv = _CoffConv(n)
        self.B2_coffconv = _CoffConv(n)
        self.conv_distilled1 = _conv(half, n, 3, bias=False)
        self.conv_distilled2 = _conv(half, n, 3, bias=False)
        self.srb3 = _SRBW1(n, cfg["srbw1_hidden"])
        self.srb4 = _SRBW1(n, cfg["srbw1_hidden"])
        self.scale_x1 = _Scale(1)
        self.scale_x2 = _Scale(1)
        self.fuse1 = _SRBW2(2 * n, cfg["srbw2_hidden"])
        self.fuse2 = _conv(2 * n, n, 1, bias=False)
        self.act = nn.LeakyReLU(0.05)
        self.SAlayer = _ShuffleAttention(n)
        self.half = half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.srb1(x))
        da1, ra1 = a[:, : self.half], a[:, self.half :]
        ao = self.rb1(ra1)
        b1 = self.A1_coffconv(ao) * ao + x
        a1 = self.B1_coffconv(x) * x + ao
        b = self.act(self.srb2(b1))
        db1, rb = b[:, : self.half], b[:, self.half :]
        bo = self.rb2(rb)
        b2 = (self.A2_coffconv(a1) * a1 + bo) * torch.sigmoid(self.conv_distilled1(db1))
        a2 = (bo * self.B2_coffconv(bo) + a1) * torch.sigmoid(self.conv_distilled2(da1))
        aout = self.srb3(a2)
        bout = self.srb4(b2)
        cat = torch.cat([self.scale_x1(aout), self.scale_x2(bout)], dim=1)
        y = self.fuse1(cat) + torch.sigmoid(self.fuse2(cat)) * bout + x
        return self.SAlayer(y)


class _Li(nn.Module):
    """FDIWG (upstream ``Li``): three FDIWBs whose outputs are fused through shuffled grouped convs."""

    def __init__(self, n: int, cfg: dict[str, Any]):
        super().__init__()
        self.MY1 = _MY(n, cfg)
        self.MY2 = _MY(n, cfg)
        self.MY3 = _MY(n, cfg)
        self.conv = _conv(n, n, 3, bias=False)
        self.conv1 = _conv(2 * n, n, 3, bias=False, groups=4)
        self.conv2 = _conv(2 * n, n, 3, bias=False, groups=4)
        self.rb1 = _SRBW1(n, cfg["srbw1_hidden"])
        self.scale_x = _Scale(0.5)
        self.scale_res = _Scale(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.MY1(x)
        o11 = self.MY2(o1)
        o3 = self.MY3(o11 + self.conv(o1))
        c1 = self.conv1(_channel_shuffle(torch.cat([o1, o11], dim=1), 4))
        c2 = self.conv2(_channel_shuffle(torch.cat([c1, o3], dim=1), 4))
        return self.scale_x(c2 + o3) + self.scale_res(self.rb1(x))


class FDIWN(nn.Module):
    """The FDIWN network on RGB 0..255: (N, 3, H, W) -> (N, 3, H*scale, W*scale).

    Build it with :func:`build` (from an ``arch_config``), load a converted state dict with
    ``strict=True``. Example: see the module docstring.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        cfg = _resolve_config(config)
        self.config = cfg
        n, s, up = cfg["channels"], cfg["scale"], cfg["up_channels"]
        self.Sub_mean = _conv(3, 3, 1)
        self.Add_mean = _conv(3, 3, 1)
        self.head = _conv(3, n, 3)
        self.Li1 = _Li(n, cfg)
        self.Li2 = _Li(n, cfg)
        self.Li3 = _Li(n, cfg)
        self.conv1 = _conv(n, up, 3, bias=False)
        self.UP1 = nn.Sequential(_conv(up, 3 * s * s, 3), nn.PixelShuffle(s))
        self.conv2 = _conv(3, up, 3)
        self.UP2 = nn.Sequential(_conv(up, 3 * s * s, 3), nn.PixelShuffle(s))
        self.shallow_from_raw = cfg["shallow_input"] == "raw"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.Sub_mean(x)
        f = self.Li1(self.head(m))
        # Each group runs twice with the same weights, in this order: Li1, Li1, Li2, Li3, Li2, Li3.
        u1 = self.Li1(f)
        d = f + u1
        u2 = self.Li2(d)
        d = d + u2
        u3 = self.Li3(d)
        d = d + u3
        u4 = self.Li2(d)
        d = d + u4
        u5 = self.Li3(d)
        y = f + u1 + u2 + u3 + u4 + u5
        y1 = self.UP1(self.conv1(y))
        y2 = self.UP2(self.conv2(x if self.shallow_from_raw else m))
        return self.Add_mean(y1 + y2)


def build(config: dict[str, Any]) -> FDIWN:
    """The FDIWN network for ``config`` (``{"scale": s}`` is enough for the released widths); 0..255 range.

    Example:
        >>> build({"scale": 4}).config["up_channels"]
        32
    """
    return FDIWN(dict(config))


def traits(config: dict[str, Any]) -> ArchTraits:
    """Any input size works: all convolutions are padded and nothing downsamples.

    Example:
        >>> traits({"scale": 2}).size_multiple
        1
    """
    _resolve_config(config)
    # Precision safety is measured per checkpoint and kept in its manifest record (``precision``).
    return ArchTraits(min_size=1, size_multiple=1)


def fold_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """``g * v / ||v||`` (norm per output channel over all other dims), in float64, returned as float32.

    Example:
        >>> v = torch.tensor([[3.0, 4.0]]); g = torch.tensor([[10.0]])
        >>> fold_weight_norm(g, v)
        tensor([[6., 8.]])
    """
    g = weight_g.detach().to("cpu", torch.float64)
    v = weight_v.detach().to("cpu", torch.float64)
    if g.numel() != v.shape[0]:
        raise CheckpointError(
            f"weight_g has {g.numel()} values but weight_v has {v.shape[0]} output channels; "
            "the checkpoint is corrupt"
        )
    norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
    return (g.reshape(norm.shape) * v / norm).to(torch.float32)


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Upstream FDIWN tensors -> this module's keys: X.weight_g + X.weight_v become X.weight.

    Already-folded state dicts pass through unchanged. Key names are otherwise identical to upstream.

    Example:
        >>> sd = {"a.weight_g": torch.ones(2, 1, 1, 1), "a.weight_v": torch.ones(2, 3, 1, 1)}
        >>> sd["a.bias"] = torch.zeros(2)
        >>> sorted(convert_state_dict(sd, {"scale": 2}))
        ['a.bias', 'a.weight']
    """
    _resolve_config(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_g"):
            stem = key[: -len("_g")]
            if stem + "_v" not in state_dict:
                raise CheckpointError(
                    f"checkpoint has {key!r} but no {stem + '_v'!r}; the weight-norm pair is incomplete"
                )
            if stem in state_dict:
                raise CheckpointError(
                    f"checkpoint has both {stem!r} and its weight-norm pair; it is ambiguous"
                )
            out[stem] = fold_weight_norm(value, state_dict[stem + "_v"])
        elif key.endswith(".weight_v"):
            if key[: -len("_v")] + "_g" not in state_dict:
                raise CheckpointError(
                    f"checkpoint has {key!r} but no {key[:-2] + '_g'!r}; the weight-norm pair is incomplete"
                )
        else:
            out[key] = value
    return out


def _weight_shape(sd: dict[str, torch.Tensor], stem: str) -> tuple[int, ...] | None:
    """Shape of ``stem.weight`` in folded or weight-norm form."""
    t = sd.get(stem + ".weight", sd.get(stem + ".weight_v"))
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def match_state_dict(state_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The ``arch_config`` an FDIWN state dict (upstream weight-norm or folded form) fits, else ``None``.

    Widths are read from tensor shapes; the scale from the upsampler (3*s*s output channels). Whether the
    shallow branch sees the raw input is not visible in the weights: it follows the released models
    (raw for x2/x3, mean-shifted for x4).

    Example:
        >>> sd = build({"scale": 3}).state_dict()
        >>> match_state_dict(sd)["scale"], match_state_dict({"conv.weight": torch.ones(1)})
        (3, None)
    """
    try:
        sub, head = _weight_shape(state_dict, "Sub_mean"), _weight_shape(state_dict, "head")
        up1, conv1 = _weight_shape(state_dict, "UP1.0"), _weight_shape(state_dict, "conv1")
        srbw1 = _weight_shape(state_dict, "Li1.MY1.srb1.body.0")
        srbw = _weight_shape(state_dict, "Li1.MY1.rb1.body.0")
        srbw2 = _weight_shape(state_dict, "Li1.MY1.fuse1.body.0")
        coff = _weight_shape(state_dict, "Li1.MY1.A1_coffconv.upper_branch.1")
        if None in (sub, head, up1, conv1, srbw1, srbw, srbw2, coff) or sub != (3, 3, 1, 1):
            return None
        if not all(f"Li{i}.scale_x.scale" in state_dict for i in (1, 2, 3)):
            return None
        scale = math.isqrt(up1[0] // 3)
        if 3 * scale * scale != up1[0] or scale not in OFFICIAL_CONFIGS:
            return None
        config = {
            "scale": scale,
            "channels": head[0],
            "srbw1_hidden": srbw1[0],
            "srbw_hidden": srbw[0],
            "srbw2_hidden": srbw2[0],
            "up_channels": conv1[0],
            "shallow_input": OFFICIAL_CONFIGS[scale]["shallow_input"],
        }
        _resolve_config(config)
    except (CheckpointError, UnsupportedScaleError, TypeError, IndexError):
        return None
    # The guess must describe the whole file: compared on the folded form (a weight-norm pair counts as
    # the one weight it folds into, with weight_v's shape), so a tensor missing or extra is no fit.
    folded: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_g"):
            if key[: -len("_g")] + "_v" not in state_dict:
                return None
            continue
        stem = key[: -len("_v")] if key.endswith(".weight_v") else key
        if stem != key and stem + "_g" not in state_dict:
            return None
        if not hasattr(value, "shape") or stem in folded:
            return None
        folded[stem] = torch.empty(tuple(value.shape), device="meta")
    return exact_fit(build, config, folded)
