"""Device and precision choice, the Upscaler class, and load_model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightsr import _hub
from lightsr._weights import load_into, load_weights_file
from lightsr._zoo import ModelDescriptor, describe
from lightsr.errors import CheckpointError, DeviceError, InputError

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA if available, else MPS, else CPU; anything else is checked to exist."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise DeviceError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(dev)!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"device {str(dev)!r} requested but MPS is not available; use device='cpu' or 'auto'")
    return dev


def cpu_has_bf16_units() -> bool:
    """True when this CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    cpu = getattr(torch._C, "_cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = set(next((ln for ln in fh if ln.startswith("flags")), "").split())
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """'auto' -> fp16 on CUDA, bf16 on CPUs with bf16 units, else fp32; or the named one."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_bf16_units():
            return torch.bfloat16
        return torch.float32
    try:
        return _PRECISIONS[precision]
    except KeyError:
        raise DeviceError(f"unknown precision {precision!r}; use 'auto', 'fp32', 'fp16' or 'bf16'") from None


class Upscaler:
    """A loaded super-resolution model, ready to upscale.

    ``module`` is the network as a 0..1-in, 0..1-out ``nn.Module`` in eval mode, in fp32 on ``device``.

    Example:
        >>> import torch, lightsr
        >>> up = lightsr.load_model("rfdn", scale=4, weights="../shared/weights/RFDN_AIM_x4.pth", precision="fp32")
        >>> up.upscale(torch.rand(1, 3, 16, 16)).shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(self, module: nn.Module, descriptor: ModelDescriptor, *, device: torch.device, dtype: torch.dtype):
        self.descriptor = descriptor
        self.device = device
        self.dtype = dtype
        self.module = module.to(device).eval()

    @property
    def name(self) -> str:
        return self.descriptor.name

    @property
    def scale(self) -> int:
        return self.descriptor.scale

    @property
    def precision(self) -> str:
        return {v: k for k, v in _PRECISIONS.items()}[self.dtype]

    def __repr__(self) -> str:
        return f"Upscaler(name={self.name!r}, scale={self.scale}, device={str(self.device)!r}, precision={self.precision!r})"

    def upscale(self, image: Any, **options: Any) -> Any:
        """Upscale a float NCHW tensor in 0..1; returns an N x C x (H*scale) x (W*scale) tensor."""
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.is_floating_point():
            raise InputError("expected a float NCHW tensor in 0..1")
        return self._run(image)

    @torch.inference_mode()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        traits = self.descriptor.traits
        h, w = x.shape[-2:]
        ph = _padded(h, traits.min_size, traits.size_multiple) - h
        pw = _padded(w, traits.min_size, traits.size_multiple) - w
        x = x.to(self.device, torch.float32)
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        y = self.module(x)
        s = self.scale
        return y[..., : h * s, : w * s]


def _padded(n: int, min_size: int, multiple: int) -> int:
    n = max(n, min_size)
    return -(-n // multiple) * multiple


def load_model(
    name: str | None = None,
    scale: int = 4,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    variant: str | None = None,
) -> Upscaler:
    """Load a super-resolution model and return an :class:`Upscaler`.

    ``name`` is a model from ``lightsr models`` (e.g. ``"rfdn"``, ``"imdn"``, ``"fdiwn"``); ``scale`` the
    upscaling factor. ``weights`` may be a converted ``.safetensors`` file or an upstream checkpoint
    (converted in memory); without it the weights are found in the cache or downloaded.

    Example:
        >>> import lightsr
        >>> up = lightsr.load_model("imdn", scale=2, weights="../shared/weights/IMDN_x2.pth")
        >>> up.scale
        2
    """
    if name is None:
        raise InputError("give a model name, e.g. load_model('rfdn', scale=4)")
    desc = describe(name, scale, variant)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    path = Path(weights) if weights is not None else _hub.resolve_weights(desc)
    tensors = load_weights_file(path, desc)
    net = desc.build_network()
    try:
        load_into(net, tensors, source=str(path))
    except RuntimeError as exc:  # size mismatch
        raise CheckpointError(f"{str(path)!r} does not fit {desc.name} x{desc.scale}: {exc}") from exc
    return Upscaler(desc.wrap(net), desc, device=dev, dtype=dtype)


def upscale(image: Any, *, model: str = "rfdn", scale: int = 4, **options: Any) -> Any:
    """One-line upscale: ``load_model(model, scale)`` then ``.upscale(image)``."""
    load_keys = {"weights", "device", "precision", "variant"}
    up = load_model(model, scale, **{k: v for k, v in options.items() if k in load_keys})
    return up.upscale(image, **{k: v for k, v in options.items() if k not in load_keys})
