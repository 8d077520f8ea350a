"""SAFMN: Spatially-Adaptive Feature Modulation Network, NTIRE 2023 ESR entry (team 15; dim 36, 8 blocks, x4).

Written from ``../shared/specs/SAFMN_NTIRE2023.md`` (a prose description of sunny2109/SAFMN @ 68c2182,
``NTIRE2023_ESR/models/team15_SAFMN.py``, MIT); no upstream code was copied. This challenge variant differs
from the paper's SAFMN: a GRN (global response normalisation) follows the first conv and the blocks carry
no LayerNorm. The checkpoint's keys are ours as they are.

Native range 0..1, no mean shift; the output adds a bilinear x4 upsampling of the input.

Size constraint: each SAFM layer adaptively max-pools three quarters of its channels to H/4, H/8 and
H/16 (floored), so the input must be at least 16 x 16 LR pixels. There is no size multiple: adaptive
pooling and the nearest-neighbour resize back accept any size >= 16, and the official numbers
(specs/REFERENCE.md) were made on whole, unpadded images; padding to a multiple of 16 would change the
pooling windows and hence the output.

Example:
    >>> import torch
    >>> from lightsr.archs import safmn
    >>> net = safmn.build({"scale": 4}).eval()
    >>> net(torch.rand(1, 3, 16, 20)).shape
    torch.Size([1, 3, 64, 80])
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightsr.archs._common import ArchTraits, check_keys, exact_fit
from lightsr.errors import CheckpointError

__all__ = [
    "CONVERSION_SHRINKS",
    "SAFMN",
    "SKETCHES",
    "build",
    "convert_state_dict",
    "match_state_dict",
    "traits",
]

# Architecture sketches for the docs (docs/models.md), one per model of this family; from its spec.
SKETCHES: dict[str, str] = {
    "safmn-ntire23": """\
x ─ conv3x3 3→36 ─ GRN ─ AttBlock ×8 ─ conv3x3 36→48 ─ PixelShuffle×4 ─(+)─ y
x ─ bilinear ×4 ──────────────────────────────────────────────────────┘
AttBlock: spatially-adaptive feature modulation (four channel chunks, three of them max-pooled to 1/4, 1/8,
1/16 size, depthwise conv3x3, resized back, conv1x1, GELU gate) + convolutional channel mixer, each residual.
The NTIRE 2023 efficient-SR entry (36 channels); needs inputs of at least 16 pixels. 0..1 input; x4 only.""",
}
# convert_state_dict keeps every upstream parameter (tests/test_manifest.py checks the count).
CONVERSION_SHRINKS: str | None = None

N_LEVELS = 4
# The coarsest SAFM level pools to floor(H / 16), which must be at least 1.
MIN_SIZE = 2**N_LEVELS

_DEFAULTS: dict[str, Any] = {"scale": 4, "dim": 36, "num_blocks": 8, "ffn_scale": 2.0}


class GRN(nn.Module):
    """Global response normalisation: x * (per-channel L2 norm / its channel mean), affine, plus x."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.linalg.vector_norm(x, ord=2, dim=(2, 3), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
        return self.gamma * (x * n) + self.beta + x


class SAFM(nn.Module):
    """Spatially-adaptive feature modulation: multi-scale depthwise features -> GELU gate on the input."""

    def __init__(self, dim: int, n_levels: int = N_LEVELS):
        super().__init__()
        self.n_levels = n_levels
        chunk = dim // n_levels
        self.mfr = nn.ModuleList(
            nn.Conv2d(chunk, chunk, 3, padding=1, groups=chunk, bias=False) for _ in range(n_levels)
        )
        self.aggr = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        parts = x.chunk(self.n_levels, dim=1)
        out = [self.mfr[0](parts[0])]
        for i in range(1, self.n_levels):
            size = (h // 2 ** (i + 1), w // 2 ** (i + 1))
            s = self.mfr[i](F.adaptive_max_pool2d(parts[i], size))
            out.append(F.interpolate(s, size=(h, w), mode="nearest"))
        return F.gelu(self.aggr(torch.cat(out, dim=1))) * x


class CCM(nn.Module):
    """Convolutional channel mixer: 3x3 conv expanding by ffn_scale, GELU, 1x1 conv back (no biases)."""

    def __init__(self, dim: int, ffn_scale: float = 2.0):
        super().__init__()
        hidden = int(dim * ffn_scale)
        self.ccm = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1, bias=False), nn.GELU(), nn.Conv2d(hidden, dim, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ccm(x)


class AttBlock(nn.Module):
    def __init__(self, dim: int, ffn_scale: float = 2.0):
        super().__init__()
        self.safm = SAFM(dim)
        self.ccm = CCM(dim, ffn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.safm(x) + x
        return self.ccm(x) + x


class SAFMN(nn.Module):
    """SAFMN (NTIRE 2023 challenge form) on 0..1 RGB: N x 3 x H x W (H, W >= 16) -> N x 3 x sH x sW.

    Example:
        >>> import torch
        >>> SAFMN(scale=4).eval()(torch.rand(1, 3, 16, 16)).shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(self, scale: int = 4, dim: int = 36, num_blocks: int = 8, ffn_scale: float = 2.0):
        super().__init__()
        self.scale = scale
        self.norm = GRN(dim)
        self.to_feat = nn.Conv2d(3, dim, 3, padding=1)
        self.feats = nn.Sequential(*(AttBlock(dim, ffn_scale) for _ in range(num_blocks)))
        self.to_img = nn.Sequential(nn.Conv2d(dim, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ident = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        f = self.feats(self.norm(self.to_feat(x)))
        return self.to_img(f) + ident


def _config(config: dict[str, Any]) -> dict[str, Any]:
    check_keys("SAFMN", config, _DEFAULTS, {"scale": 4})
    c = {**_DEFAULTS, **config}
    ints_ok = all(isinstance(c[k], int) and c[k] >= 1 for k in ("scale", "dim", "num_blocks"))
    if (
        not ints_ok
        or c["dim"] % N_LEVELS
        or not (isinstance(c["ffn_scale"], (int, float)) and c["ffn_scale"] > 0)
    ):
        raise CheckpointError(
            f"SAFMN arch_config needs positive integers scale/num_blocks, dim a multiple of {N_LEVELS} "
            f"and ffn_scale > 0, got {config!r}"
        )
    return c


def build(config: dict[str, Any]) -> SAFMN:
    """The SAFMN network for ``config`` (keys: scale, dim, num_blocks, ffn_scale).

    Example:
        >>> len(build({"scale": 4}).feats)
        8
    """
    c = _config(config)
    return SAFMN(scale=c["scale"], dim=c["dim"], num_blocks=c["num_blocks"], ffn_scale=float(c["ffn_scale"]))


def traits(config: dict[str, Any]) -> ArchTraits:
    """At least 16 x 16 LR pixels (the H/16 pooling level), no size multiple; fp16 and bf16 are safe.

    Measured on the official checkpoint: activations stay below ~700 even on binary pixel noise, and the
    GRN's per-channel L2 norm is about 0.6 * sqrt(H * W) at most (fp16 overflows at 65504 only past
    ~1e10 pixels); Set5 x4 Y-PSNR drops 0.002 dB in fp16 and 0.01 dB in bf16.

    Example:
        >>> traits({"scale": 4}).min_size
        16
    """
    _config(config)
    return ArchTraits(min_size=MIN_SIZE, size_multiple=1, fp16_safe=True, bf16_safe=True)


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Upstream SAFMN keys are already ours: returned as they are (a shallow copy).

    Example:
        >>> sd = build({"scale": 4}).state_dict()
        >>> convert_state_dict(sd, {"scale": 4}).keys() == sd.keys()
        True
    """
    _config(config)
    return dict(state_dict)


def match_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The arch_config of an NTIRE-2023 SAFMN state dict, else ``None``.

    Example:
        >>> match_state_dict(build({"scale": 4}).state_dict())
        {'scale': 4, 'dim': 36, 'num_blocks': 8, 'ffn_scale': 2.0}
    """
    try:
        first = state_dict["to_feat.weight"]
        last = state_dict["to_img.0.weight"]
        hidden = state_dict["feats.0.ccm.ccm.0.weight"]
        gamma = state_dict["norm.gamma"]
    except KeyError:
        return None
    if first.ndim != 4 or last.ndim != 4 or hidden.ndim != 4 or gamma.ndim != 4:
        return None
    dim = int(first.shape[0])
    scale = math.isqrt(int(last.shape[0]) // 3)
    num_blocks = 1 + max(
        (int(k.split(".")[1]) for k in state_dict if k.startswith("feats.") and k.split(".")[1].isdigit()),
        default=-1,
    )
    if dim % N_LEVELS or scale < 1 or scale * scale * 3 != int(last.shape[0]) or num_blocks == 0:
        return None
    config: dict[str, Any] = {
        "scale": scale,
        "dim": dim,
        "num_blocks": num_blocks,
        "ffn_scale": int(hidden.shape[0]) / dim,
    }
    return exact_fit(build, config, state_dict)
