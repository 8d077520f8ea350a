"""Device and precision choice, the Upscaler class, load_model, and the NaN / out-of-memory fallbacks."""

from __future__ import annotations

import copy
import logging
import os
import threading
import warnings
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightsr import _backends, _hub, _image
from lightsr._fastpath import FastModule, optimize_for_inference

# The tiling limits and _is_oom stay importable from here (the CLI and tests read them).
from lightsr._planner import (  # noqa: F401
    DEFAULT_TILE_PAD,
    MAX_AUTO_TILE_BATCH,
    MIN_TILE,
    CallOptions,
    plan_run,
    progress_units,
)
from lightsr._planner import Plan as _Plan
from lightsr._runner import Progress as _Progress
from lightsr._runner import is_oom as _is_oom  # noqa: F401
from lightsr._runner import run_retrying
from lightsr._tilestats import TileStatistics, count_image_reductions, resize_sources
from lightsr._tiling import RowSink, TileRegion, padded_length, tiled_apply
from lightsr._weights import identify_checkpoint, load_into, load_weights_file
from lightsr._zoo import ModelDescriptor, check_scale, describe
from lightsr.errors import CheckpointError, DeviceError, InputError

logger = logging.getLogger("lightsr")

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Statistics passes before the final one when a network with whole-map reductions is tiled: two
# bring tiled output within a few grey levels of whole-image output (IMDN x3, barbara, tile 64: max
# difference 58 grey levels without statistics, 10 after one pass, 1 after two).
GATHER_PASSES = 2
# Activation memory one network call may use on a CPU (per call: concurrent calls each take this
# much); tiles and batches are sized to it. One image may run whole above it, up to this share of the
# memory available now (_whole_image_budget): a fixed 1 GiB made 'auto' tile images that fit easily
# (bsrn x2 fp32 at 512x512 LR needs ~1.6 GB: tiled with 3 statistics passes, 2.6x slower than whole;
# issue 19); the share leaves room for the result, the input and other programs.
CPU_BUDGET_BYTES = 1 << 30
CPU_AVAILABLE_FRACTION = 0.25
# Only networks whose tiles cost more than their padding (whole-image statistics: three passes per tile;
# ESA resize replay on an engine backend: the tiles run on eager torch, rfdn x4 bf16 at 1024x1024 LR
# +47% over the whole image on OpenVINO) run whole above the tile budget, and never above this: it keeps
# every CPU run of a 1500 x 1500 x4 image in tiles of the fixed budget (issue 19's CLI peak below 1.2 GB),
# since such an image needs more than this in every zoo network.
CPU_WHOLE_IMAGE_MAX_BYTES = 4 << 30
# LR pixels per network call on a CPU in bf16/fp16 when tiles cost nothing extra (no whole-image
# statistics to gather): below the memory budget, because larger half-precision calls are slower
# there (with glibc's allocator, large feature maps come back as fresh pages, page-faulted on every
# layer). Measured on 2 Sapphire Rapids cores, 1024x1024 LR, rfdn x4 (benchmarks/speed.py and
# docs/performance.md): bf16 whole 4.4 s, tiles of the 1 GiB budget 3.9 s, at this cap 3.4 s; in
# fp32 the cap costs 7% (8.2 -> 8.8 s), so fp32 keeps the budget. It also keeps the CLI's 1500x1500
# x4 peak at 1.1 GB instead of 1.4 (1.54 GB measured without it for rfdn's tiles). Networks with
# whole-image statistics keep the budget (smaller tiles cost them more statistics padding). Networks whose
# tiles need resize-grid replay (ESA: rfdn, rlfn, bsrn) run in eager torch off the engine backend when
# tiled, so an image that fits the budget runs whole instead of in capped tiles (rfdn x4 bf16 at 512x512
# LR: whole 1.8-2.5 s, capped tiles 4.6-10.4 s; issue 19); their tiles keep the cap.
CPU_HALF_CALL_PIXELS = 320 * 320
# LR pixels per tile window on a CPU in fp32 (same networks as the cap above; whole-image decisions keep
# the budget). Tiles of the full 1 GiB budget (rfdn x4: 455 x 455 windows, about 500 MB resident per
# call, twice what they compute: fragmentation, and tensors freed late) put `lightsr upscale` of a
# 1500 x 1500 image x4 at 1.26 GB in fp32 even with the result written band by band; 384 x 384 windows
# put it at 1.07-1.14 GB (ONNX Runtime backend, whose rfdn tiles run on torch fp32; issue 19's 1.2 GB
# target), for 2% more padding arithmetic than 455 x 455 windows.
CPU_FP32_TILE_PIXELS = 384 * 384
# Share of the device's free memory one run may use on CUDA / MPS.
GPU_BUDGET_FRACTION = 0.5


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` to run on: ``'auto'`` picks CUDA if available, else MPS, else CPU.

    Any other value (``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'mps'`` or a ``torch.device``) is checked to
    exist here; a missing one raises :class:`~lightsr.errors.DeviceError`.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
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
            raise DeviceError(
                f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
            ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {str(dev)!r} requested but CUDA is not available; use device='cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {str(dev)!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist; "
                "use 'cuda:0' or 'auto'"
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError(
                f"device {str(dev)!r} requested but MPS is not available; use device='cpu' or 'auto'"
            )
    elif dev.type != "cpu":
        raise DeviceError(f"device type {dev.type!r} is not supported; use 'auto', 'cpu', 'cuda' or 'mps'")
    return dev


@lru_cache(maxsize=1)
def cpu_has_bf16_units() -> bool:
    """True when this CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16).

    Read from what the CPU reports (PyTorch's probes where present, else the flags in ``/proc/cpuinfo``),
    never guessed from the vendor. Where neither is available (macOS, Windows) the answer is False,
    which only means fp32 is chosen by ``precision='auto'``.

    Example:
        >>> isinstance(cpu_has_bf16_units(), bool)
        True
    """
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
    """The compute dtype for ``precision`` on ``device``.

    ``'auto'`` gives fp16 on CUDA, bf16 on CPUs with native bf16 units (:func:`cpu_has_bf16_units`),
    fp32 otherwise (MPS included); ``'fp32'``, ``'fp16'``, ``'bf16'`` force one. Unknown values raise
    :class:`~lightsr.errors.DeviceError`.

    Example:
        >>> resolve_precision("fp32", torch.device("cpu"))
        torch.float32
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_bf16_units():
            return torch.bfloat16
        return torch.float32
    try:
        return _PRECISIONS[precision]
    except (KeyError, TypeError):
        raise DeviceError(f"unknown precision {precision!r}; use 'auto', 'fp32', 'fp16' or 'bf16'") from None


def _model_dtype(precision: str, device: torch.device, desc: ModelDescriptor) -> torch.dtype:
    """resolve_precision, then respect the model's traits: 'auto' never picks a precision marked unsafe."""
    dtype = resolve_precision(precision, device)
    unsafe = (dtype is torch.float16 and not desc.traits.fp16_safe) or (
        dtype is torch.bfloat16 and not desc.traits.bf16_safe
    )
    if unsafe:
        name = {v: k for k, v in _PRECISIONS.items()}[dtype]
        if precision == "auto":
            return torch.float32
        warnings.warn(
            f"{desc.name} x{desc.scale} is marked unsafe in {name} (quality loss or overflow); running in "
            f"{name} because it was asked for. Tiles that overflow are recomputed in fp32.",
            stacklevel=3,
        )
    return dtype


_fork_guard_lock = threading.Lock()
_fork_guard_installed = False


def _one_thread_after_fork() -> None:
    # A forked child inherits the parent's OpenMP pool state but not its threads: the first parallel
    # kernel then waits forever for workers that do not exist (plain conv2d does too). One thread runs
    # every kernel inline, so the child works (serially); 'spawn' children get the full pool.
    torch.set_num_threads(1)


def _install_fork_guard() -> None:
    """Once per process that builds an Upscaler: forked children run torch on one thread, not hang."""
    global _fork_guard_installed
    with _fork_guard_lock:
        if not _fork_guard_installed and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_one_thread_after_fork)
            _fork_guard_installed = True


def _memory_budget(device: torch.device) -> int:
    """Bytes of activations one network call may use on ``device``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * GPU_BUDGET_FRACTION)
    if device.type == "mps":
        try:
            free = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
            return max(int(free * GPU_BUDGET_FRACTION), 256 << 20)
        except (AttributeError, RuntimeError):
            return 2 << 30
    return CPU_BUDGET_BYTES


def _whole_image_budget(device: torch.device, costly_tiles: bool) -> int:
    """Bytes of activations a single image may use to run whole under ``tile_size='auto'``.

    On a CPU, where tiling costs more than its padding (``costly_tiles``: whole-image statistics cost
    two extra passes; tiles that replay the ESA resize grid leave an engine backend for eager torch), a
    share of the memory available now, within [tile budget, CPU_WHOLE_IMAGE_MAX_BYTES]. Everything else:
    the tile budget (:func:`_memory_budget`), which also bounds every tile, so the peak of large images
    stays fixed.
    """
    budget = _memory_budget(device)
    if device.type != "cpu" or not costly_tiles:
        return budget
    available = _image.available_memory()
    if available is None:
        return budget
    return max(budget, min(CPU_WHOLE_IMAGE_MAX_BYTES, int(available * CPU_AVAILABLE_FRACTION)))


def _bytes_per_lr_pixel(module: nn.Module, dtype: torch.dtype, scale: int) -> int:
    """A generous estimate of peak activation bytes per LR input pixel of one network call.

    The widest convolution output sets the feature width; the factor 24 covers the feature maps a
    lightweight SR network keeps alive at once (distilled features waiting for their concat,
    attention branches), plus the HR output. Measured peak RSS on CPU (300 x 300 LR): E-RFDN fp32
    4.4 kB/px (estimate 5.2), IMDN x2 fp32 4.8 kB/px (6.2), IMDN x2 bf16 2.9 kB/px (3.1).
    Overestimating only makes tiles smaller; underestimating is caught by the OOM fallback on GPUs.
    """
    widths = [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]
    width = max(widths, default=64)
    item = torch.tensor([], dtype=dtype).element_size()
    return 24 * width * item + 3 * scale * scale * (item + 4)


class Upscaler:
    """A loaded super-resolution model, ready to upscale; safe to share between threads.

    ``module`` is the network as a 0..1-in, 0..1-out ``nn.Module`` in eval mode, in fp32 on ``device``
    (the plain model, for callers who want to run it themselves). Upscaling itself runs a private copy
    of it in the compute precision (``precision``: ``'fp32'``, ``'fp16'`` or ``'bf16'``) and the
    channels-last memory layout; any tile whose reduced-precision output holds NaN or Inf is
    recomputed with ``module`` in fp32. Calls keep no state on the instance, so threads of a server
    may call :meth:`upscale` on one Upscaler at once and get what serial calls would give.
    ``backend`` names what runs the network's calls: ``'torch'``, ``'onnxruntime'`` or ``'openvino'``
    (see :func:`load_model`); everything else above is the same on each.
    In a child made by ``fork`` (``multiprocessing``'s default on Linux before Python 3.14) an Upscaler
    works, on one CPU thread (PyTorch's thread pool does not survive a fork: without this it would hang);
    for parallel work, create the processes with the ``'spawn'`` or ``'forkserver'`` start method and load
    the model in each.

    Large images run in overlapping, cross-faded tiles. For networks that reduce whole feature maps
    (channel attention, GroupNorm, global pooling), tiled runs first gather those statistics over
    the whole image (:data:`GATHER_PASSES` extra passes over the tiles), so the result does not
    depend on the tile size: it stays within a few grey levels of the whole-image result.

    Example:
        >>> import torch, lightsr
        >>> up = lightsr.load_model(
        ...     "rfdn", scale=4, weights="../shared/weights/RFDN_AIM_x4.pth", precision="fp32"
        ... )
        >>> up.upscale(torch.rand(1, 3, 16, 16)).shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(
        self,
        module: nn.Module,
        descriptor: ModelDescriptor,
        *,
        device: torch.device,
        dtype: torch.dtype,
        compile: bool = False,
        backend: str = "torch",
    ):
        _install_fork_guard()
        self.descriptor = descriptor
        self.device = device
        self.dtype = dtype
        self.module = module.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        # The compute copy holds its weights in the compute dtype and layout once and for all: no
        # per-call casts, and no swapping of the shared module's dtype (which would race between threads).
        # It is the inference rewrite of lightsr._fastpath (folded scales, activations fused into the
        # convolutions: 1.1-1.5x on this CPU, docs/performance.md); torch.compile gets the plain copy.
        compute: Any = None
        if not compile:
            try:
                compute = optimize_for_inference(self.module, descriptor, dtype=dtype, device=device)
            except Exception as exc:  # noqa: BLE001 - a rewrite must never cost the user a working model
                logger.warning(
                    "inference rewrite failed for %s (%s); running the plain network", descriptor.name, exc
                )
        if compute is None:
            compute = copy.deepcopy(self.module).to(dtype=dtype)
            if (
                device.type != "mps"
            ):  # channels_last: the fast conv layout of oneDNN (CPU) and CUDA tensor cores
                compute = compute.to(memory_format=torch.channels_last)
        self._compute: Any = compute
        # FastModule picks its own layout (channels-last except where the network reshapes channels).
        self._converts_input = isinstance(compute, FastModule)
        # torch.compile's first calls (tracing) are not thread-safe: compiled calls are serialised.
        self._compiled: Any = torch.compile(compute, dynamic=None) if compile else None
        self._compile_lock = threading.Lock() if compile else None
        # An inference engine (lightsr._backends) runs the network's plain calls; statistics passes and
        # the fp32 recomputation of non-finite tiles stay on torch.
        if compile and backend != "torch":
            raise DeviceError("compile=True applies to the torch backend; drop it or use backend='torch'")
        self._backend: Any = _backends.make_backend(
            backend, self.module, descriptor, dtype=dtype, device=device, bf16_units=cpu_has_bf16_units()
        )
        self.backend = backend if self._backend is not None else "torch"
        self._torch_reason_logged = False
        # Networks that reduce whole feature maps (channel attention, GroupNorm...) need statistics
        # passes when tiled; counted once on a small probe.
        side = padded_length(max(descriptor.traits.min_size, 16), 1, descriptor.traits.size_multiple)
        with torch.inference_mode():
            probe = torch.zeros(1, 3, side, side, device=device)
            self._image_reductions = count_image_reductions(self.module, probe)
        # Tiles are plain network calls (no statistics passes, no resize replay, engine backend kept).
        self._plain_tiles = not self._image_reductions and descriptor.traits.tile_align == 1

    @property
    def name(self) -> str:
        """The model name, e.g. ``'rfdn'``."""
        return self.descriptor.name

    @property
    def scale(self) -> int:
        """The upscaling factor: outputs are ``scale`` times the input height and width."""
        return self.descriptor.scale

    @property
    def precision(self) -> str:
        """The compute precision: ``'fp32'``, ``'fp16'`` or ``'bf16'``."""
        return {v: k for k, v in _PRECISIONS.items()}[self.dtype]

    def __repr__(self) -> str:
        return (
            f"Upscaler(name={self.name!r}, scale={self.scale}, device={str(self.device)!r}, "
            f"precision={self.precision!r}"
            + (f", backend={self.backend!r})" if self.backend != "torch" else ")")
        )

    # ------------------------------------------------------------------ public entry point
    def upscale(
        self,
        image: Any,
        *,
        tile_size: int | str | None = "auto",
        tile_pad: int | None = None,
        batch_size: int | None = None,
        max_pixels: int | None = _image.DEFAULT_MAX_PIXELS,
        progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Upscale ``image`` by :attr:`scale`; the result is the same kind of object as the input.

        ``image`` may be a file path (a ``PIL.Image`` comes back), a ``PIL.Image`` (same mode), a numpy
        array ``HxW`` / ``HxWxC`` (uint8, uint16 or float in 0..1; same dtype and layout back), a torch
        tensor ``CxHxW`` / ``NxCxHxW`` (float in 0..1, uint8 or uint16; same dtype, layout and device
        back), or a list/tuple of any of these (a list comes back; images of equal size are batched).
        C may be 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); alpha is resized bicubically, not
        by the network. Every output is ``scale`` times the input's height and width, values in range.

        ``tile_size``: ``'auto'`` (default) runs an image whole when it fits a memory budget for the
        device and otherwise in tiles sized to that budget; ``None`` always runs whole images; an int
        (>= 16, LR pixels) forces tiles of at most that side. ``tile_pad`` is the LR context around each
        tile (default :data:`DEFAULT_TILE_PAD`); tiles are cross-faded, so the result has no seams.
        ``batch_size`` caps how many images (whole runs) or tiles (tiled runs) go through the network
        at once (default: what fits the budget).

        Limits, checked before any decoding or network run (a file from its header alone), each an
        :class:`~lightsr.errors.ImageTooLargeError` naming the size and the limit: ``max_pixels`` refuses
        inputs with more than that many pixels (default 89_478_485, Pillow's decompression-bomb limit,
        e.g. 9459 x 9459; ``None`` lifts it); and an input whose
        result (``scale**2`` times its pixels, in float32 and in its own dtype) would not fit in the memory
        available now is refused whatever ``max_pixels`` says: upscale a smaller image, or parts of it.
        Closed PIL images, animations and multi-page files, pipes and devices, meta-device, sparse and
        quantized tensors raise :class:`~lightsr.errors.InputError` saying what to pass instead.
        On out-of-memory (CUDA, MPS, or the CPU allocator's ``can't allocate memory`` and ``MemoryError``)
        the batch is split and then the tile halved and the run retried, down to 16 LR pixels, before a
        :class:`~lightsr.errors.DeviceError`. ``progress``, if given, is called
        as ``progress(done, total)`` after every network call, counting tiles (or whole images) over
        every pass of the run, e.g. to drive a progress bar over the tiles of one large image.

        Example:
            >>> import torch, lightsr
            >>> up = lightsr.load_model(
            ...     "imdn", scale=2, weights="../shared/weights/IMDN_x2.pth", precision="fp32"
            ... )
            >>> up.upscale(torch.rand(2, 3, 40, 30), tile_size=16).shape
            torch.Size([2, 3, 80, 60])
            >>> import numpy as np
            >>> [a.shape for a in up.upscale([np.zeros((5, 7, 3), np.uint8), np.zeros((9, 4), np.uint16)])]
            [(10, 14, 3), (18, 8)]
        """
        options = CallOptions.checked(tile_size, tile_pad, batch_size, progress)
        many = isinstance(image, (list, tuple))
        inputs = list(image) if many else [image]
        # Everything is checked and converted before any network runs, so a bad last item costs nothing.
        prepared: list[list[_image.Prepared]] = []
        reserved = 0  # every result of a list is held until the call returns
        for obj in inputs:
            prepared.append(
                _image.prepare(obj, max_pixels=max_pixels, scale=self.scale, reserved_bytes=reserved)
            )
            reserved += _image.result_bytes(prepared[-1], self.scale)
        flat = [p for items in prepared for p in items]
        outputs = self._upscale_prepared(flat, options)
        results, k = [], 0
        for items in prepared:
            results.append(_image.collate(outputs[k : k + len(items)]))
            k += len(items)
        return results if many else results[0]

    def _upscale_prepared(self, items: list[_image.Prepared], options: CallOptions) -> list[Any]:
        """Run the network on every prepared image (same-sized ones as one batch) and finish each."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, p in enumerate(items):
            groups.setdefault((p.rgb.device, *p.rgb.shape[-2:]), []).append(i)
        tracker = None
        if options.progress is not None:
            total = 0
            for members in groups.values():
                n = sum(items[i].rgb.shape[0] for i in members)
                h, w = items[members[0]].rgb.shape[-2:]
                plan = self._plan(h, w, n, options.tile_size, options.tile_pad, options.batch_size)
                total += self._units(n, h, w, plan)
            tracker = _Progress(options.progress, total)
        outputs: list[Any] = [None] * len(items)
        for members in groups.values():
            x = items[members[0]].rgb if len(members) == 1 else torch.cat([items[i].rgb for i in members])
            streamed = (
                _image.StreamedResult.for_item(items[members[0]], self.scale) if len(members) == 1 else None
            )
            sink = None if streamed is None else streamed.write
            y = self._upscale_rgb(x, options, progress=tracker, sink=sink)
            if y is None:  # tiled into ``streamed``: no full-size float canvas was made
                assert streamed is not None
                outputs[members[0]] = streamed.result()
                del x
                continue
            for j, i in enumerate(members):
                p = items[i]
                alpha = _image.upscale_alpha(p.alpha, self.scale) if p.alpha is not None else None
                # y is this call's own buffer and each slice is finished once: convert it in place.
                outputs[i] = _image.finish(y[j : j + 1], alpha, p.restore, owned=True)
            del x, y
        return outputs

    # ------------------------------------------------------------------ core
    def _upscale_rgb(
        self,
        x: torch.Tensor,
        options: CallOptions,
        progress: _Progress | None = None,
        sink: RowSink | None = None,
    ) -> torch.Tensor | None:
        """N x 3 x H x W float 0..1 (any device) -> N x 3 x sH x sW float32 on the same device, not yet
        clamped to 0..1 (``_image.finish`` does that, once per image).

        With ``sink`` (one image), a tiled run hands its rows to it instead (unclamped) and returns None.
        """
        if x.shape[-2] < 1 or x.shape[-1] < 1 or x.shape[0] < 1:
            raise InputError(f"the image is empty (shape {tuple(x.shape)})")
        x = x.float()
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        plan = self._plan(h, w, n, options.tile_size, options.tile_pad, options.batch_size)
        with torch.inference_mode():
            if plan.tile is None and sink is None:
                parts = [self._run_retrying(chunk, plan, progress) for chunk in x.split(plan.batch)]
                y = parts[0] if len(parts) == 1 else torch.cat(parts)  # type: ignore[list-item]
            else:  # tiled, or one image with a sink (a whole plan may still tile after out-of-memory)
                y = self._run_retrying(x, plan, progress, sink)
            if y is None:
                return None
            return y.contiguous()  # unclamped: _image.finish clamps each image once

    def _plan(
        self, h: int, w: int, n: int, tile_size: int | str | None, tile_pad: int, batch_size: int | None
    ) -> _Plan:
        """The plan for these (checked) options: lightsr._planner over this model's budget and traits."""
        per_px = _bytes_per_lr_pixel(self.module, self.dtype, self.scale)
        if self._backend is not None and self._plain_tiles:
            return self._engine_plan(h, w, n, CallOptions(tile_size, tile_pad, batch_size), per_px)
        budget_px = _memory_budget(self.device) // per_px
        capped = self.device.type == "cpu" and not self._image_reductions
        if capped and self.dtype != torch.float32:
            budget_px = min(budget_px, CPU_HALF_CALL_PIXELS)
        # Plain tiles cost only their padding, so the call budget decides; other tiling costs passes
        # or the engine backend, so one image runs whole while it fits the (larger) whole-image budget.
        whole_px = (
            budget_px
            if self._plain_tiles
            else _whole_image_budget(self.device, bool(self._image_reductions) or self._backend is not None)
            // per_px
        )
        if capped and self.dtype == torch.float32:
            budget_px = min(budget_px, CPU_FP32_TILE_PIXELS)
        options = CallOptions(tile_size, tile_pad, batch_size)
        return plan_run(
            h, w, n, options, self.descriptor.traits, budget_pixels=budget_px, whole_pixels=whole_px
        )

    def _engine_plan(self, h: int, w: int, n: int, options: CallOptions, per_px: int) -> _Plan:
        """The plan on an engine backend whose tiles stay on it (no whole-image statistics, no resize
        replay). The torch caps of _plan do not apply: the engines manage their own memory. Tiles cost
        padding and, on OpenVINO, a compile per new window shape, so one image runs whole while it fits
        the whole-image budget (imdn-rte x2 bf16 on OpenVINO, AMD EPYC, 2 threads: 640x360 LR in tiles
        under the torch cap 90 ms, whole 44 ms; 1024x1024 tiled 428 ms, whole 251 ms)."""
        budget_px = _memory_budget(self.device) // per_px
        whole_px = _whole_image_budget(self.device, True) // per_px
        traits = self.descriptor.traits
        return plan_run(h, w, n, options, traits, budget_pixels=budget_px, whole_pixels=whole_px)

    def _units(self, n: int, h: int, w: int, plan: _Plan) -> int:
        """Progress units of one plan: images for whole runs, tiles times passes for tiled ones."""
        passes = 1 + (GATHER_PASSES if self._image_reductions else 0)
        return progress_units(n, h, w, plan, self.descriptor.traits, passes=passes)

    def _tiled(
        self,
        x: torch.Tensor,
        plan: _Plan,
        progress: _Progress | None = None,
        sink: RowSink | None = None,
    ) -> torch.Tensor | None:
        """One attempt at a plan: a plain tiled run, or gather passes then a replaying run. With ``sink``,
        a split image is handed over in bands of rows (see ``tiled_apply``) and None returned."""
        traits = self.descriptor.traits
        common: dict[str, Any] = {
            "scale": self.scale,
            "tile_size": plan.tile,
            "tile_pad": plan.pad,
            "min_size": traits.min_size,
            "multiple": traits.size_multiple,
            "batch_tiles": plan.batch,
        }
        sources = self._resize_sources(x) if plan.tile is not None and traits.tile_align > 1 else None
        if plan.tile is None or not (self._image_reductions or sources):
            forward = self._forward if progress is None else partial(self._forward, progress=progress)
            return tiled_apply(forward, x, sink=sink, **common)
        if self._backend is not None and not self._torch_reason_logged:
            self._torch_reason_logged = True
            logger.info(
                "%s x%d tiled on torch instead of %s: its tiles need whole-image %s, which only eager torch "
                "calls can gather and replay",
                self.name,
                self.scale,
                self.backend,
                "statistics" if self._image_reductions else "resize grids",
            )
        common["align"] = traits.tile_align
        stats = TileStatistics(resize_sources=sources, align=traits.tile_align)
        for _ in range(GATHER_PASSES if self._image_reductions else 0):
            gather = partial(self._forward, stats=stats, gather=True, progress=progress)
            tiled_apply(gather, x, with_regions=True, assemble=False, **common)
            stats.freeze()
        replay = partial(self._forward, stats=stats, gather=False, progress=progress)
        return tiled_apply(replay, x, with_regions=True, sink=sink, **common)

    def _resize_sources(self, x: torch.Tensor) -> list[tuple[int, int]] | None:
        """The coarse-map sizes a whole-image run of ``x`` resizes from (None if it has none).

        Learned from a run on the ``meta`` device: shapes only, no memory, no arithmetic.
        """
        traits = self.descriptor.traits
        h = padded_length(x.shape[-2], traits.min_size, traits.size_multiple)
        w = padded_length(x.shape[-1], traits.min_size, traits.size_multiple)
        state = {k: v.to("meta") for k, v in (*self.module.named_parameters(), *self.module.named_buffers())}
        try:
            probe = torch.empty(1, 3, h, w, device="meta")
            sizes = resize_sources(lambda t: torch.func.functional_call(self.module, state, (t,)), probe)
        except (RuntimeError, NotImplementedError) as exc:  # an op without a meta kernel: plain tiles
            logger.debug("no meta-device probe for %s: %s", self.name, exc)
            return None
        return sizes or None

    def _run_retrying(
        self,
        x: torch.Tensor,
        plan: _Plan,
        progress: _Progress | None = None,
        sink: RowSink | None = None,
    ) -> torch.Tensor | None:
        """Run a plan with lightsr._runner's out-of-memory retries (smaller batches, then tiles).

        ``sink`` (one image only: a batch split would renumber its images) receives tiled results.
        """
        assert sink is None or x.shape[0] == 1
        return run_retrying(
            lambda part, p: self._tiled(part, p, progress, sink),
            x,
            plan,
            device=self.device,
            progress=progress,
            units=self._units,
        )

    def _forward(
        self,
        x: torch.Tensor,
        regions: list[TileRegion] | None = None,
        *,
        stats: TileStatistics | None = None,
        gather: bool = False,
        progress: _Progress | None = None,
    ) -> torch.Tensor:
        """One network call on a batch of windows (float32, any device) -> output on self.device.

        With ``stats``, the network's whole-map reductions are gathered over the windows' cores
        (``gather``) and/or replayed with whole-image values. Any sample whose reduced-precision
        output is not finite is recomputed in fp32 (and only good samples feed the statistics).
        """
        capture = None
        if stats is None and self._backend is not None:
            y = self._backend(x)  # the engine takes the fp32 NCHW window itself
        else:
            xin = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
            if self.device.type != "mps" and not self._converts_input:
                xin = xin.contiguous(memory_format=torch.channels_last)
            if stats is not None:
                assert regions is not None
                capture = stats.capture(regions, (x.shape[-2], x.shape[-1]), gather=gather)
                with capture:
                    y = self._compute(xin)  # eager: the capture must see every torch call
            elif self._compiled is not None:
                assert self._compile_lock is not None
                with self._compile_lock:
                    y = self._compiled(xin)
            else:
                y = self._compute(xin)
        if self.dtype is torch.float32:
            bad = torch.zeros(0, dtype=torch.long)
        else:
            bad = _nonfinite_samples(y)
        if capture is not None and gather:
            good = sorted(set(range(x.shape[0])) - set(bad.tolist()))
            stats.commit(capture, good)  # type: ignore[union-attr]
        if progress is not None:
            progress.advance(x.shape[0])
        if len(bad) == 0:
            return y
        logger.info("%d tile(s) overflowed in %s; recomputing them in fp32", len(bad), self.precision)
        y = y.float()
        xb = x[bad.to(x.device)].to(device=self.device, dtype=torch.float32)
        if stats is not None:
            assert regions is not None
            capture = stats.capture(
                [regions[i] for i in bad.tolist()], (x.shape[-2], x.shape[-1]), gather=gather
            )
            with capture:
                yb = self.module(xb)
            if gather:
                stats.commit(capture)
        else:
            yb = self.module(xb)
        y[bad.to(y.device)] = yb.to(y.dtype)
        return y


def _nonfinite_samples(y: torch.Tensor) -> torch.Tensor:
    """Indices of the samples of ``y`` with a NaN or Inf (a CPU long tensor).

    One reduction pass instead of a boolean map of the whole output (2-3 ms of a 90 ms OpenVINO call at
    1280x720): a NaN or Inf anywhere makes its sample's sum non-finite, and a sum that overflows from
    finite values only sends a sample to the fp32 recompute, never hides one. An engine's fp32 output on
    the CPU is summed in numpy, so that no torch thread pool spins into the engine's next call (see
    lightsr._image._checked_float).
    """
    if y.device.type == "cpu" and y.dtype == torch.float32 and y.is_contiguous():
        with np.errstate(over="ignore", invalid="ignore"):  # overflow and inf - inf are what it looks for
            sums = y.numpy().reshape(y.shape[0], -1).sum(axis=1)
        return torch.from_numpy(np.flatnonzero(~np.isfinite(sums)))
    return (~torch.isfinite(y.flatten(1).sum(dim=1, dtype=torch.float32))).nonzero().flatten().cpu()


def load_model(
    name: str | None = None,
    scale: int | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    variant: str | None = None,
    compile: bool = False,
    backend: str = "auto",
) -> Upscaler:
    """Load a super-resolution model and return an :class:`Upscaler`.

    ``name`` is a model from ``lightsr models`` (e.g. ``"rfdn"``, ``"imdn"``, ``"fdiwn"``); ``scale`` the
    upscaling factor (default 4). ``weights`` may be a converted ``.safetensors`` file or an upstream
    checkpoint (converted in memory); without it the weights are found in the cache or downloaded.
    With ``weights`` and no ``name``, the model (and the scale, unless given) is recognised from the file:
    its lightsr header, its sha256, or its keys and shapes; an unsupported file raises ``CheckpointError``.
    ``device``: ``'auto'`` (CUDA, else MPS, else CPU), ``'cpu'``, ``'cuda'``, ``'cuda:N'``, ``'mps'``.
    ``precision``: ``'auto'`` (fp16 on CUDA, bf16 on CPUs with native bf16 units, else fp32; never a
    precision the model is marked unsafe in), or ``'fp32'``, ``'fp16'``, ``'bf16'``.
    ``compile=True`` runs the network through ``torch.compile`` (slow first call; calls serialised).
    ``backend``: what runs the network itself: ``'torch'``, ``'onnxruntime'`` (fp32; ``pip install
    "lightsr[onnxruntime]"``), ``'openvino'`` (fp32, or bf16 where the model is bf16-safe and the CPU has
    bf16 units; ``pip install "lightsr[openvino]"``), or ``'auto'`` (default: torch on CUDA/MPS; on a CPU
    the installed engine measured fastest for this model, else torch; see docs/export.md). Image
    handling, tiling, precision policy and fallbacks stay lightsr's on every backend.

    Example:
        >>> import lightsr
        >>> up = lightsr.load_model("imdn", scale=2, weights="../shared/weights/IMDN_x2.pth")
        >>> up.scale
        2
    """
    if name is None:
        if weights is None:
            raise InputError(
                "give a model name, e.g. load_model('rfdn', scale=4), or a weights file to recognise"
            )
        # An unnamed checkpoint: recognise the model (and, unless given, the scale) from the file itself.
        desc = identify_checkpoint(weights, None if scale is None else check_scale(scale))
    else:
        desc = describe(name, 4 if scale is None else scale, variant)
    dev = resolve_device(device)
    dtype = _model_dtype(precision, dev, desc)
    backend = _backends.resolve_backend(backend, desc, dev, dtype, compile=compile, precision=precision)
    if backend == "onnxruntime" and precision == "auto":
        dtype = torch.float32  # ONNX Runtime's CPU kernels run fp32 only
    path = Path(weights) if weights is not None else _hub.resolve_weights(desc)
    tensors = load_weights_file(path, desc)
    net = desc.build_network()
    try:
        load_into(net, tensors, source=str(path))
    except RuntimeError as exc:  # size mismatch
        raise CheckpointError(f"{str(path)!r} does not fit {desc.name} x{desc.scale}: {exc}") from exc
    return Upscaler(desc.wrap(net), desc, device=dev, dtype=dtype, compile=compile, backend=backend)


def upscale(image: Any, *, model: str = "rfdn", scale: int = 4, **options: Any) -> Any:
    """One-line upscale: ``load_model(model, scale, ...)`` then ``.upscale(image, ...)``.

    ``options`` go to :func:`load_model` (``weights``, ``device``, ``precision``, ``variant``, ``compile``,
    ``backend``)
    or to :meth:`Upscaler.upscale` (``tile_size``, ``tile_pad``, ``batch_size``, ``max_pixels``); ``image``
    and the result are as for :meth:`Upscaler.upscale`. The model is loaded
    on every call: to upscale many images, call :func:`load_model` once and reuse the Upscaler.

    Example:
        >>> import torch, lightsr
        >>> lightsr.upscale(torch.rand(1, 3, 8, 8), model="imdn", scale=2,
        ...                 weights="../shared/weights/IMDN_x2.pth").shape
        torch.Size([1, 3, 16, 16])
    """
    load_keys = {"weights", "device", "precision", "variant", "compile", "backend"}
    up = load_model(model, scale, **{k: v for k, v in options.items() if k in load_keys})
    return up.upscale(image, **{k: v for k, v in options.items() if k not in load_keys})
