#!/usr/bin/env python
"""Speed and memory of lightsr against plain PyTorch and against the machine's own convolution peak.

For every landed (model, scale), in one process, the variants below run *interleaved* (one call of
each per round, several rounds), so that load on a shared machine hits every variant alike; the
table reports medians and the median of the per-round ratios to ``plain``:

* ``plain``: ``Upscaler.module`` (the fp32 0..1 network) on an NCHW fp32 tensor under
  ``torch.no_grad()``, whole image: what a user of the upstream code gets.
* ``fast fp32`` / ``fast auto``: ``lightsr._fastpath.optimize_for_inference`` in fp32 and in the
  precision ``precision="auto"`` picks on this device (bf16 on CPUs with bf16 units, fp16 on CUDA).
* ``up fp32`` / ``up auto``: ``Upscaler.upscale`` as the engine runs it today (tiling ``"auto"``).
* ``ORT fp32`` / ``OV fp32`` / ``OV bf16`` (``--engines``, CPU, where installed): ONNX Runtime (all graph
  optimisations, the torch thread count) and OpenVINO (latency hint, fp32 or bf16 inference precision; bf16
  only on CPUs with bf16 units) on the same exported network (``lightsr._backends.onnx_model`` of
  ``plain``), compiled for the input shape before timing. ``fastest`` names the quickest variant of the row.
* ``compile`` (``--compile``): ``torch.compile(plain)`` (Inductor, static shape), compiled by its first call;
  that call's seconds are reported apart (``compile s``) and never enter the timings.
* ``default / best peer`` (with ``--upscaler`` and ``--engines`` or ``--compile``): the median over rounds
  of (fastest peer's seconds / ``up auto``'s seconds) in the same round, where the peers are plain, the
  engines and ``compile``: at least 1.0 means lightsr's default (``load_model`` + ``upscale``, backend and
  precision auto) is at least as fast as the best thing a user could pick instead at the same quality
  (OpenVINO bf16 counts only on bf16-safe records). The bracket is the run's noise band: the lowest and
  highest of those per-round ratios.

Inputs: 320x180 LR for x4 (1280x720 out), 640x360 for x2, 427x240 for x3. Throughput is output
megapixels per second. ``max|d|`` is the largest absolute difference to ``plain`` (fp32), ``dPSNR``
the Set5 Y-PSNR change of ``fast auto`` against ``plain`` (reduced precision). The roofline measures
this machine's best 3x3-convolution throughput at the model's width in each precision, counts the
network's multiply-adds with forward hooks, and prints achieved FLOP/s as a share of that peak.
The memory section runs ``lightsr upscale`` x4 in fresh subprocesses on 1500x1500 and 3000x3000 RGB
images and reports each child's peak resident memory (``ru_maxrss``), once per ``--memory-backends`` entry
(default: the CLI's default backend only).

Usage (from the repository root)::

    python benchmarks/speed.py                    # everything (see --help for the parts)
    python benchmarks/speed.py --quick            # one scale per model, 1500px memory run only
    python benchmarks/speed.py --models rfdn imdn:4 --no-memory
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import lightsr
from lightsr import _zoo
from lightsr._engine import resolve_device, resolve_precision
from lightsr._fastpath import PASSES, FastModule, optimize_for_inference

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SHARED = Path(os.environ.get("LIGHTSR_SHARED", REPO.parent / "shared"))
# LR input per scale: 1280x720 output for x4, 1280x720 for x2, 1281x720 for x3 (H, W).
LR_SIZE = {2: (360, 640), 3: (240, 427), 4: (180, 320)}
# A round (one call of every variant) longer than this is timed once more after the (timed) warm-up
# round, instead of twice: a further round of the slowest models (FDIWN x2: 24 s) was a sixth of the
# benchmark's time.
LONG_ROUND_S = 5.0
# A short round is repeated until the timed rounds take about this long (up to MAX_ROUNDS): two pairs of
# one-second calls moved ratios by up to 20% between runs on a shared 2-core machine, and a median of
# four or five pairs costs a few seconds per row.
SHORT_ROWS_TIMING_S = 6.0
MAX_ROUNDS = 5
DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# The speed targets over plain: what the "target needs" column measures each row against.
TARGET_SPEEDUP = {"fast fp32": 1.5, "fast auto": 5.0}
RESULTS = REPO / "benchmarks" / "results"


# ------------------------------------------------------------------------------------------ machine
def machine_info(device: torch.device) -> dict[str, str]:
    """What the numbers were measured on: CPU model and bf16 flags, torch, threads, load."""
    info: dict[str, str] = {"python": platform.python_version(), "torch": torch.__version__}
    model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore")
        for line in text.splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    info["cpu"] = model
    info["cores"] = str(os.cpu_count())
    info["bf16 units"] = (
        ", ".join(f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_fp16") if f in flags) or "none"
    )
    info["threads"] = str(torch.get_num_threads())
    with contextlib.suppress(OSError):
        info["load average"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["device"] = str(device)
    return info


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timings on CUDA are otherwise launch times); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ timing
# Seconds of idle before each timed call (see time_interleaved); far above the thread pools' spin time.
SETTLE_S = 0.05


def time_interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1, device: torch.device | None = None
) -> dict[str, list[float]]:
    """Seconds per call of every function, one call of each per round (so load drifts hit all alike).

    Every timed call starts from a settled machine: ``SETTLE_S`` of sleep first, because the thread pools
    of the call before keep spinning for milliseconds after it returns (PyTorch's OpenMP workers, ONNX
    Runtime's) and would slow whichever variant comes next (an OpenVINO call of 83 ms took 89 ms right
    after one small parallel torch op, 82.5 ms 20 ms later). Odd rounds also run the functions in reverse
    order, so that what else a call inherits from its neighbour (freshly freed memory) does not always
    fall on the same variant.
    """
    dev = device or torch.device("cpu")
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
            synchronize(dev)
        for r in range(rounds):
            for name, fn in list(fns.items())[:: -1 if r % 2 else 1]:
                synchronize(dev)
                time.sleep(SETTLE_S)
                t0 = time.perf_counter()
                fn()
                synchronize(dev)
                times[name].append(time.perf_counter() - t0)
    return times


def target_share(percent_of_peak: float, ms: float, plain_ms: float, target: float) -> float:
    """The share of its measured conv peak (percent) a variant would need to run ``target`` times faster
    than plain: the share it reaches now, scaled by how much faster it would have to get.

    Over 100 means that this machine cannot reach the target by any change of execution: the network's
    multiply-adds alone, at the measured 3x3-convolution peak, take longer than the target allows.

    Example:
        >>> round(target_share(percent_of_peak=60.0, ms=100.0, plain_ms=130.0, target=1.5), 1)  # 1.3x now
        69.2
    """
    return percent_of_peak * target * ms / plain_ms


def paired_speedup(base: Sequence[float], other: Sequence[float]) -> float:
    """Median over rounds of base/other: each round's pair saw the same machine load."""
    return statistics.median(b / o for b, o in zip(base, other))


# ------------------------------------------------------------------------------------------ roofline
def count_macs(module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Multiply-adds of every convolution and linear layer for one call on ``x`` (forward hooks), and the
    network's width: the feature width (larger of in/out channels) of the 3x3 convolutions that carry the
    most multiply-adds (CARN-M's grouped 64-wide convs count as 64, not its 3-channel exit conv)."""
    # Shapes are all the hooks read: on the meta device the call costs no arithmetic (an fp32 FDIWN x2
    # call on 640x360 is 13 s here). Networks that need real values fall back to a real call.
    try:
        return _count_macs(copy.deepcopy(module).to("meta"), x.to("meta"))
    except Exception:  # noqa: BLE001 - any meta-kernel gap: count on the real tensors
        return _count_macs(module, x)


def _count_macs(module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    total = 0
    by_width: Counter[int] = Counter()

    def conv_hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        macs = out.numel() * math.prod(m.kernel_size) * (m.in_channels // m.groups)  # type: ignore[attr-defined]
        total += macs
        if m.kernel_size == (3, 3):  # type: ignore[attr-defined]
            by_width[max(m.in_channels, m.out_channels)] += macs  # type: ignore[attr-defined]

    def linear_hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features  # type: ignore[attr-defined]

    handles = []
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    width = by_width.most_common(1)[0][0] if by_width else 64
    return total, width


_PEAK_CACHE: dict[tuple[int, torch.dtype, str], float] = {}


def conv_peak(width: int, dtype: torch.dtype, device: torch.device, rounds: int = 10) -> float:
    """This machine's best FLOP/s on a width->width 3x3 conv, channels-last, in ``dtype``.

    Best over a few spatial sizes (cache-resident to full-frame) and the fastest of ``rounds`` calls:
    a peak, not a typical value. Cached per (width, dtype, device); :func:`remeasure_peaks` may raise it.
    """
    key = (width, dtype, str(device))
    if key not in _PEAK_CACHE:
        _PEAK_CACHE[key] = _measure_peak(width, dtype, device, rounds)
    return _PEAK_CACHE[key]


def remeasure_peaks(
    device: torch.device, rounds: int = 10
) -> dict[tuple[int, torch.dtype], tuple[float, float]]:
    """Measure every cached peak once more and keep the higher value; {(width, dtype): (first, second)}.

    On a shared host a single measurement can land in a busy minute (2026-12-02, AMD EPYC: width 50 fp32
    83 GFLOP/s at the start of a run, 160 the day before), and every share of that peak is then too high
    (rfdn x4 fp32 at "120%"). Two measurements minutes apart make such a low one unlikely to stand.
    """
    out = {}
    for (width, dtype, dev), first in list(_PEAK_CACHE.items()):
        if dev != str(device):
            continue
        second = _measure_peak(width, dtype, device, rounds)
        _PEAK_CACHE[(width, dtype, dev)] = max(first, second)
        out[(width, dtype)] = (first, second)
    return out


def _measure_peak(width: int, dtype: torch.dtype, device: torch.device, rounds: int) -> float:
    conv = nn.Conv2d(width, width, 3, padding=1).to(
        device=device, dtype=dtype, memory_format=torch.channels_last
    )
    best = 0.0
    with torch.inference_mode():
        for h, w in ((64, 64), (128, 128), (180, 320)):
            x = torch.randn(1, width, h, w, device=device, dtype=dtype).contiguous(
                memory_format=torch.channels_last
            )
            reps = max(1, 60000 // (h * w))
            conv(x)
            for _ in range(rounds):
                synchronize(device)
                t0 = time.perf_counter()
                for _ in range(reps):
                    conv(x)
                synchronize(device)
                dt = (time.perf_counter() - t0) / reps
                best = max(best, 2 * width * width * 9 * h * w / dt)
    return best


# ------------------------------------------------------------------------------------------ models
@dataclass
class Case:
    """One (model, scale) record with its local upstream checkpoint."""

    record: dict[str, Any]
    weights: Path

    @property
    def label(self) -> str:
        return f"{self.record['model']} x{self.record['scale']}"


def landed_cases(shared: Path, wanted: Sequence[str] | None, quick: bool) -> list[Case]:
    """Records whose architecture has landed (arch_config set) and whose checkpoint is in shared/weights.

    ``wanted``: ``name`` (every scale) or ``name:scale``; ``quick``: one scale per model (x4 if any).
    """
    cases = []
    for rec in _zoo.records():
        if rec.get("arch_config") is None:
            continue
        path = shared / "weights" / rec["upstream"]["filename"]
        if not path.is_file():
            continue
        if wanted:
            keys = {rec["model"], f"{rec['model']}:{rec['scale']}"}
            if not keys & set(wanted):
                continue
        cases.append(Case(rec, path))
    if quick:
        best: dict[str, Case] = {}
        for c in cases:
            cur = best.get(c.record["model"])
            if cur is None or abs(c.record["scale"] - 4) < abs(cur.record["scale"] - 4):
                best[c.record["model"]] = c
        cases = list(best.values())
    return cases


def load(case: Case, precision: str, device: torch.device) -> lightsr.Upscaler:
    rec = case.record
    return lightsr.load_model(
        rec["model"],
        rec["scale"],
        weights=case.weights,
        device=device,
        precision=precision,
        variant=rec.get("variant"),
    )


def natural_lr(shared: Path, h: int, w: int) -> torch.Tensor:
    """A natural LR input of h x w (Set14 baboon, resized): on noise some networks (PAN, BSRN) blow
    features up to 1e4..1e10, which says nothing about images and swamps the fp32 comparison."""
    from PIL import Image

    img = (
        Image.open(shared / "benchmarks" / "Set14" / "HR" / "baboon.png")
        .convert("RGB")
        .resize((w, h), Image.BICUBIC)
    )
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float().div_(255.0)


class _FnUpscaler:
    """The minimum ``lightsr.evaluate`` needs from a model: ``scale`` and ``upscale(x, tile_size=None)``."""

    def __init__(
        self, fn: Callable[[torch.Tensor], torch.Tensor], scale: int, name: str, device: torch.device
    ):
        self.fn, self.scale, self.name, self.device = fn, scale, name, device

    def upscale(self, x: torch.Tensor, tile_size: Any = None) -> torch.Tensor:
        with torch.inference_mode():
            return self.fn(x.to(self.device)).float().cpu()


def set5_psnr(
    fn: Callable[[torch.Tensor], torch.Tensor], scale: int, shared: Path, device: torch.device
) -> float:
    res = lightsr.evaluate(_FnUpscaler(fn, scale, "x", device), shared / "benchmarks" / "Set5")
    return res.psnr_y


# ------------------------------------------------------------------------------------------ one model
@dataclass
class Row:
    label: str
    lr: tuple[int, int]
    out_mp: float
    gmac: float
    width: int
    auto: str
    times: dict[str, list[float]]
    speedup: dict[str, float]
    max_diff: float
    dpsnr: float | None
    pct_peak: dict[str, float] = field(default_factory=dict)
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    # Seconds of torch.compile's compiling first call, or why it could not compile (None: not asked).
    compile_s: float | str | None = None
    bf16_ok: bool = True  # the record's bf16_safe trait
    default_backend: str | None = None  # the backend 'up auto' (load_model's defaults) ran on

    def update_pct_peak(self, device: torch.device) -> None:
        """Each variant's achieved FLOP/s as a percentage of the (cached) conv peak of its width and dtype."""
        for name, dtype in self.dtypes.items():
            peak = conv_peak(self.width, dtype, device)
            self.pct_peak[name] = 100.0 * 2 * self.gmac * 1e9 / statistics.median(self.times[name]) / peak


ENGINE_COLUMNS = ("ORT fp32", "OV fp32", "OV bf16")
# What a user could run instead of lightsr's default: the "default / best peer" column's competitors.
PEERS = ("plain", *ENGINE_COLUMNS, "compile")


def compile_fn(plain: nn.Module, x: torch.Tensor) -> tuple[Callable[[], Any] | None, float | str]:
    """``torch.compile`` of the plain module for ``x``'s shape: (call, seconds of the compiling first call),
    or (None, why) where Inductor cannot build here (it needs a C++ compiler on CPU)."""
    # Every network of a family shares its forward's code object, and Dynamo's recompile limit (8) counts
    # per code object: without a reset the later scales of a family silently ran eager (rlfn x4: "compile"
    # at 0.95x plain, 0 s to compile, in the 2026-12-04 run).
    torch._dynamo.reset()
    try:
        compiled = torch.compile(plain, dynamic=False)
        with torch.inference_mode():
            t0 = time.perf_counter()
            compiled(x)
            seconds = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 (Inductor raises many types: no compiler, unsupported op)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
    return (lambda: compiled(x)), seconds


def default_vs_best_peer(
    times: dict[str, list[float]], bf16_ok: bool = True
) -> tuple[float, float, float, str] | None:
    """(median, lowest, highest) over rounds of the fastest peer's seconds / ``up auto``'s seconds in the
    same round, and the peer fastest by median; None without ``up auto`` or any peer but plain.

    A peer must meet the quality bar lightsr's default meets: OpenVINO bf16 competes only where the record
    is bf16-safe (``bf16_ok``: Set5 within 0.02 dB of fp32), as 'auto' would not pick bf16 elsewhere either.

    Example:
        >>> default_vs_best_peer({"up auto": [1.0, 1.0, 1.0], "plain": [3.0, 3.0, 3.0],
        ...                       "OV bf16": [0.9, 1.1, 1.2]})
        (1.1, 0.9, 1.2, 'OV bf16')
    """
    peers = [k for k in PEERS if k in times and k != "plain" and (bf16_ok or k != "OV bf16")]
    if "up auto" not in times or not peers:
        return None
    peers.append("plain")
    per_round = [min(times[p][i] for p in peers) / mine for i, mine in enumerate(times["up auto"])]
    best = min(peers, key=lambda p: statistics.median(times[p]))
    return statistics.median(per_round), min(per_round), max(per_round), best


def engine_fns(
    plain: nn.Module, desc: Any, x: torch.Tensor, device: torch.device
) -> dict[str, Callable[[], Any]]:
    """The installed engines on one exported graph of ``plain`` (none off the CPU or without a graph)."""
    from lightsr import _backends
    from lightsr._engine import cpu_has_bf16_units
    from lightsr.errors import LightSRError

    if device.type != "cpu" or not _backends.installed("onnxruntime") and not _backends.installed("openvino"):
        return {}
    try:
        graph = _backends.onnx_model(plain, desc).SerializeToString()
    except LightSRError as exc:
        print(f"<!-- {desc.name} x{desc.scale}: no engines ({exc}) -->", file=sys.stderr)
        return {}
    fns: dict[str, Callable[[], Any]] = {}
    if _backends.installed("onnxruntime"):
        ort = _backends.OnnxRuntimeBackend(graph)
        fns["ORT fp32"] = lambda: ort(x)
    if _backends.installed("openvino"):
        ov32 = _backends.OpenVINOBackend(graph)
        fns["OV fp32"] = lambda: ov32(x)
        if cpu_has_bf16_units():
            ov16 = _backends.OpenVINOBackend(graph, bf16=True)
            fns["OV bf16"] = lambda: ov16(x)
    with torch.inference_mode():
        for fn in fns.values():  # OpenVINO compiles for the shape here, so no timed call includes it
            fn()
    return fns


def bench_case(
    case: Case,
    device: torch.device,
    rounds: int,
    shared: Path,
    psnr: bool,
    upscaler: bool,
    engines: bool = False,
    compiled: bool = False,
) -> Row:
    up32 = load(case, "fp32", device)
    plain = up32.module
    desc = up32.descriptor
    # The fp32 fast path is the one the fp32 Upscaler built at load: not traced and rewritten a second
    # time (FDIWN: 2-3 s per build).
    built = getattr(up32, "_compute", None)
    fp32_built = isinstance(built, FastModule) and built.dtype is torch.float32
    auto_dtype = resolve_precision("auto", device)
    if (auto_dtype is torch.bfloat16 and not desc.traits.bf16_safe) or (
        auto_dtype is torch.float16 and not desc.traits.fp16_safe
    ):
        auto_dtype = torch.float32
    fast32 = built if fp32_built else optimize_for_inference(plain, desc, dtype=torch.float32, device=device)
    # Where 'auto' resolves to fp32 it is the fp32 fast path itself: timed once, reported on both rows.
    same = auto_dtype is torch.float32
    fastauto = fast32 if same else optimize_for_inference(plain, desc, dtype=auto_dtype, device=device)
    s = desc.scale
    h, w = LR_SIZE[s]
    x = natural_lr(shared, h, w).to(device)
    fns: dict[str, Callable[[], Any]] = {"plain": lambda: plain(x), "fast fp32": lambda: fast32(x)}
    if not same:
        fns["fast auto"] = lambda: fastauto(x)
    if upscaler:
        upauto = load(case, "auto", device)
        fns["up fp32"] = lambda: up32.upscale(x)
        fns["up auto"] = lambda: upauto.upscale(x)
        # An engine backend compiles for each new input shape on its first call (OpenVINO: 1-4 s), as the
        # engines below do before timing: that call is made here, untimed, so no variant's timings hold it.
        with torch.inference_mode():
            upauto.upscale(x)
    if engines:
        fns.update(engine_fns(plain, desc, x, device))
    compile_s: float | str | None = None
    if compiled:
        fn, compile_s = compile_fn(plain, x)
        if fn is not None:
            fns["compile"] = fn
    # The first call of every variant is its warm-up (a warm-up round more would cost a third of the
    # benchmark's time: FDIWN x2, 26 s); it is timed too, and plain's and fast fp32's outputs are compared.
    warm: dict[str, float] = {}
    with torch.inference_mode():
        for name, fn in fns.items():
            synchronize(device)
            t0 = time.perf_counter()
            out = fn()
            synchronize(device)
            warm[name] = time.perf_counter() - t0
            if name == "plain":
                ref = out
            elif name == "fast fp32":
                max_diff = float((out.float() - ref).abs().max())
        del ref, out
    round_s = sum(warm.values())
    long_row = round_s > LONG_ROUND_S
    if long_row:
        # One timed round, and the warm-up round counts as a second: in calls this long the first call's
        # set-up (oneDNN primitives, first allocations) measured 1-2% (rlfn x2, fdiwn x3), well inside
        # the noise that a single pair of calls leaves (fdiwn x3 fp32: 0.98x in one run, 1.21-1.26x in
        # others).
        rounds = 1
    else:
        rounds = max(rounds, min(MAX_ROUNDS, int(SHORT_ROWS_TIMING_S / round_s)))
    times = time_interleaved(fns, rounds, warmup=0, device=device)
    if long_row:
        for name, seconds in warm.items():
            times[name].insert(0, seconds)
    if same:
        times["fast auto"] = times["fast fp32"]
    speed = {k: paired_speedup(times["plain"], v) for k, v in times.items()}
    macs, width = count_macs(plain, x)
    dpsnr = None
    if psnr and auto_dtype is not torch.float32:
        # The fp32 side is the fp32 fast path: it equals plain to max|d| (about 2e-6, measured above),
        # far below what moves a PSNR, and runs 1.2-2.5x faster than plain.
        base = set5_psnr(fast32, s, shared, device)
        dpsnr = set5_psnr(fastauto, s, shared, device) - base
    out_mp = h * s * w * s / 1e6
    dtypes = {"plain": torch.float32, "fast fp32": torch.float32, "fast auto": auto_dtype}
    row = Row(
        case.label,
        (w, h),
        out_mp,
        macs / 1e9,
        width,
        DTYPE_NAME[auto_dtype],
        times,
        speed,
        max_diff,
        dpsnr,
        dtypes=dtypes,
        compile_s=compile_s,
        bf16_ok=desc.traits.bf16_safe,
        default_backend=upauto.backend if upscaler else None,
    )
    row.update_pct_peak(device)
    return row


# ------------------------------------------------------------------------------------------ ablation
def ablation(
    case: Case, device: torch.device, rounds: int, shared: Path
) -> list[tuple[str, float, float, int]]:
    """Each rewrite's share: cumulative passes in the auto dtype; (step, MP/s, x plain, rewrites)."""
    up32 = load(case, "fp32", device)
    plain, desc = up32.module, up32.descriptor
    dtype = resolve_precision("auto", device)
    h, w = LR_SIZE[desc.scale]
    x = natural_lr(shared, h, w).to(device)
    steps: list[tuple[str, tuple[str, ...]]] = [("cast + channels-last only", ())]
    for i, p in enumerate(PASSES):
        steps.append((f"+ {p}", PASSES[: i + 1]))
    mods = {
        label: optimize_for_inference(plain, desc, dtype=dtype, device=device, passes=ps)
        for label, ps in steps
    }
    # A pass that rewrote nothing leaves the previous step's network: not timed again.
    same_as: dict[str, str] = {}
    for (label, _), (prev, _) in zip(steps[1:], steps[:-1], strict=True):
        if not mods[label].report.get(label[2:]):
            same_as[label] = same_as.get(prev, prev)
    fns: dict[str, Callable[[], Any]] = {"plain": lambda: plain(x)}
    fns.update({label: (lambda m=m: m(x)) for label, m in mods.items() if label not in same_as})
    times = time_interleaved(fns, rounds, device=device)
    times.update({label: times[src] for label, src in same_as.items()})
    mp = h * w * desc.scale**2 / 1e6
    out = []
    for label, _ in steps:
        n = sum(v for k, v in mods[label].report.items() if k in PASSES)
        out.append(
            (label, mp / statistics.median(times[label]), paired_speedup(times["plain"], times[label]), n)
        )
    return out


# ------------------------------------------------------------------------------------------ tiling
def tiling_overhead(
    case: Case, device: torch.device, rounds: int, shared: Path, size: int = 1024
) -> tuple[float, float, Any]:
    """Seconds for a size x size LR input whole vs. with the default tiling; (whole, tiled, plan)."""
    up = load(case, "auto", device)
    x = natural_lr(shared, size, size).to(device)
    fns = {"whole": lambda: up.upscale(x, tile_size=None), "tiled": lambda: up.upscale(x)}
    # No untimed warm-up round (15 s here): the first round's set-up (oneDNN primitives, first pages) is
    # 1-2% of a call this long, and the median of three rounds sets a slow first one aside anyway.
    times = time_interleaved(fns, rounds, warmup=0, device=device)
    plan = None
    with contextlib.suppress(Exception):
        plan = up._plan(size, size, 1, "auto", 24, None)  # what "auto" chose, for the report
    return statistics.median(times["whole"]), statistics.median(times["tiled"]), plan


def folder_overhead(
    case: Case, device: torch.device, rounds: int, shared: Path, count: int = 20, seed: int = 0
) -> tuple[float, float, list[tuple[int, int]]]:
    """Seconds for a folder of ``count`` uint8 RGB photos of mixed sizes (sides 256-1500 px, drawn with
    ``seed``), each upscaled whole vs. with the default tiling; (whole, tiled, sizes). Each photo's two
    calls run interleaved, ``rounds`` times after an untimed one each, and each side's median counts."""
    up = load(case, "auto", device)
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(256, 1501)), int(rng.integers(256, 1501))) for _ in range(count)]
    whole = tiled = 0.0
    for h, w in sizes:
        img = (natural_lr(shared, h, w)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        fns = {
            "whole": lambda img=img: up.upscale(img, tile_size=None),
            "tiled": lambda img=img: up.upscale(img),
        }
        # One untimed call of each first: an engine backend compiles for each new input shape (OpenVINO:
        # about 1 s per photo here), which both variants would pay alike but only the first would show.
        times = time_interleaved(fns, rounds, warmup=1, device=device)
        whole += statistics.median(times["whole"])
        tiled += statistics.median(times["tiled"])
    return whole, tiled, sizes


# ------------------------------------------------------------------------------------------ memory
# The child reports its own peak: the kernel's ru_maxrss of a child also counts the memory it shared
# with this (large) benchmark process between fork and exec, which once reported 2.8 GB for a run
# that peaks at 1.1 GB. VmHWM belongs to the program after exec alone (Linux; elsewhere ru_maxrss).
_HWM_TAG = "LIGHTSR_BENCH_VMHWM_KB"
_CLI_WITH_HIGH_WATER_MARK = f"""
import atexit, sys
def _report():
    try:
        with open("/proc/self/status") as f:
            hwm = [line.split()[1] for line in f if line.startswith("VmHWM:")]
        sys.stderr.write("{_HWM_TAG} " + hwm[0] + "\\n")
    except (OSError, IndexError):
        pass
atexit.register(_report)
from lightsr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli_peak_rss(
    case: Case, side: int, workdir: Path, fmt: str, precision: str, backend: str | None = None
) -> tuple[float, float, int, str]:
    """Peak resident MB, seconds and exit status of ``lightsr upscale`` on a side x side RGB image (child),
    with ``--backend backend`` (None: the CLI's default)."""
    from PIL import Image

    src = workdir / f"in_{side}.png"
    if not src.exists():
        rng = np.random.default_rng(0)
        # Smooth-ish content (not white noise) so the PNG stays small and the image looks like one.
        small = rng.integers(0, 256, (side // 8 + 1, side // 8 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side), Image.BILINEAR).save(src)
    out = workdir / f"out_{side}"
    cmd = [
        sys.executable,
        "-c",
        _CLI_WITH_HIGH_WATER_MARK,
        "upscale",
        str(src),
        "-o",
        str(out),
        "--model",
        case.record["model"],
        "--scale",
        str(case.record["scale"]),
        "--weights",
        str(case.weights),
        "--precision",
        precision,
        "--format",
        fmt,
        "--overwrite",
        "-q",
        *(["--backend", backend] if backend else []),
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc  # reaped by wait4 above; tell Popen so it does not wait again
    for f in out.glob("*"):
        f.unlink()
    marks = [line.split()[1] for line in stderr.splitlines() if line.startswith(_HWM_TAG)]
    peak_mb = int(marks[-1]) / 1024.0 if marks else usage.ru_maxrss / 1024.0
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(_HWM_TAG)]
    return peak_mb, seconds, rc, lines[-1] if rc and lines else ""


# ------------------------------------------------------------------------------------------ output
def write_json(
    path: Path, rows: Sequence[Row], machine: dict[str, str], rounds: int, extra: dict[str, Any] | None = None
) -> None:
    """The timings in the shape scripts/make_figures.py reads (kind "speed", one row per variant), plus
    what scripts/gen_docs.py needs for docs/performance.md (``extra``: peaks, tiling overhead, memory)."""
    import json

    device = f"{machine['device']}: {machine['cpu']} ({machine['threads']} threads)"
    out_rows = []
    for r in rows:
        model, scale = r.label.split(" x")
        for variant, precision in (
            ("plain", "fp32 plain PyTorch"),
            ("fast fp32", "fp32"),
            ("fast auto", r.auto),
        ):
            out_rows.append(
                {
                    "model": model,
                    "scale": int(scale),
                    "precision": precision,
                    "variant": variant,
                    "input": [r.lr[1], r.lr[0]],
                    "ms": round(1000 * statistics.median(r.times[variant]), 2),
                    "speedup": round(r.speedup[variant], 3),
                    "gmac": round(r.gmac, 3),
                    "percent_of_peak": round(r.pct_peak[variant], 1),
                    "rounds": len(r.times[variant]),
                    "output_mp_per_s": round(r.out_mp / statistics.median(r.times[variant]), 3),
                }
            )
            if variant == "fast fp32":
                out_rows[-1]["max_abs_diff"] = r.max_diff
            if variant == "fast auto" and r.dpsnr is not None:
                out_rows[-1]["dpsnr_set5"] = round(r.dpsnr, 4)
    # Every variant of every row (engines, up, compile included), for the per-CPU comparison tables of
    # docs/performance.md; "rows" above keeps the shape make_figures.py reads.
    comparison = []
    for r in rows:
        model, scale = r.label.split(" x")
        vs = default_vs_best_peer(r.times, r.bf16_ok)
        comparison.append(
            {
                "model": model,
                "scale": int(scale),
                "input": [r.lr[1], r.lr[0]],
                "auto": r.auto,
                "default_backend": r.default_backend,
                "bf16_ok": r.bf16_ok,
                "output_mp": round(r.out_mp, 4),
                "ms": {k: round(1000 * statistics.median(v), 2) for k, v in r.times.items()},
                "compile_s": round(r.compile_s, 1) if isinstance(r.compile_s, float) else r.compile_s,
                "default_vs_best_peer": None
                if vs is None
                else {
                    "median": round(vs[0], 3),
                    "low": round(vs[1], 3),
                    "high": round(vs[2], 3),
                    "peer": vs[3],
                },
            }
        )
    data = {
        "kind": "speed",
        "device": device,
        "machine": machine,
        "rounds": rounds,
        "rows": out_rows,
        "comparison": comparison,
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def roofline_cells(r: Row) -> list[str]:
    """The table's last two cells for a row: its shares of the conv peak, and what the targets need."""
    med = {k: statistics.median(v) for k, v in r.times.items()}
    needs = (target_share(r.pct_peak[k], med[k], med["plain"], t) for k, t in TARGET_SPEEDUP.items())
    return [
        " / ".join(f"{r.pct_peak[k]:.0f}%" for k in ("plain", "fast fp32", "fast auto")),
        " / ".join(f"{n:.0f}%" for n in needs),
    ]


def fmt_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None
) -> str:
    """A Markdown table (no trailing newline); ``align``: one separator cell per column (``---``, ``--:``).
    The one formatter of the benchmarks and of scripts/gen_docs.py's generated docs tables."""
    separators = list(align) if align is not None else ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(separators) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--models", nargs="*", metavar="NAME[:SCALE]", help="models to run (default: every landed one)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="one scale per model, no ablation or tiling check, 1500px memory run only",
    )
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per variant (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared folder (weights, Set5)")
    ap.add_argument("--no-psnr", action="store_true", help="skip the Set5 PSNR check")
    ap.add_argument(
        "--upscaler",
        action="store_true",
        help="also time Upscaler.upscale as the engine runs it (fp32 and auto): two more variants",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the CLI peak-memory runs")
    ap.add_argument(
        "--engines",
        action="store_true",
        help="also time ONNX Runtime fp32 and OpenVINO fp32/bf16 on the exported network (CPU)",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile of the plain module (compile time reported apart)",
    )
    ap.add_argument(
        "--memory-sizes", type=int, nargs="*", default=None, help="image sides for the memory runs"
    )
    ap.add_argument(
        "--memory-backends",
        nargs="*",
        default=None,
        metavar="BACKEND",
        help="run the memory runs once per backend (torch, onnxruntime, openvino; default: the CLI default)",
    )
    ap.add_argument(
        "--memory-format", default="tiff", help="output format of the memory runs (tiff: no PNG encoder time)"
    )
    ap.add_argument(
        "--ablation",
        nargs="*",
        default=None,
        metavar="NAME[:SCALE]",
        help="models for the per-rewrite table (default rfdn:4 imdn:4; none with --quick)",
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the timings as JSON for scripts/make_figures.py (default for a full run: "
        "benchmarks/results/speed.json; '-' for none)",
    )
    ap.add_argument(
        "--tiling", action="store_true", default=None, help="run the 1024x1024 tiling-overhead check"
    )
    ap.add_argument("--no-tiling", dest="tiling", action="store_false")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rounds = args.rounds or 2
    started = time.perf_counter()
    cases = landed_cases(args.shared, args.models, args.quick)
    if not cases:
        print("no landed model with local weights matches --models", file=sys.stderr)
        return 2

    print("## Machine\n")
    print(fmt_table(["", ""], machine_info(device).items()))
    print(
        f"\nrounds per variant: {rounds} (interleaved, after 1 warm-up round; where a round takes over "
        f"{LONG_ROUND_S:.0f} s, the warm-up round and 1 more; up to {MAX_ROUNDS} where "
        f"{SHORT_ROWS_TIMING_S:.0f} s "
        "of timing allows); ratios are medians of per-round ratios\n"
    )

    print("## Throughput (output megapixels per second; x = speed-up over plain)\n", flush=True)
    header = [
        "model",
        "LR in",
        "GMAC",
        "plain MP/s",
        "fast fp32",
        "max abs d",
        "auto",
        "fast auto",
        "dPSNR Set5",
    ]
    if args.upscaler:
        header += ["up fp32", "up auto"]
    if args.engines:
        header += [*ENGINE_COLUMNS]
    if args.compile:
        header += ["compile", "compile s"]
    if args.engines or args.compile:
        header += ["fastest"]
    if args.upscaler and (args.engines or args.compile):
        header += ["default / best peer [noise]"]
    header += ["% peak plain / fp32 / auto", "target needs fp32 1.5x / auto 5x"]
    print(fmt_table(header, []), flush=True)
    rows = []
    for case in cases:  # each row is printed as soon as it is measured: a cut-off run still reports
        t0 = time.perf_counter()
        r = bench_case(
            case, device, rounds, args.shared, not args.no_psnr, args.upscaler, args.engines, args.compile
        )
        rows.append(r)
        med = {k: statistics.median(v) for k, v in r.times.items()}
        cells = [
            r.label,
            f"{r.lr[0]}x{r.lr[1]}",
            f"{r.gmac:.1f}",
            f"{r.out_mp / med['plain']:.2f}",
            f"{r.out_mp / med['fast fp32']:.2f} ({r.speedup['fast fp32']:.2f}x)",
            f"{r.max_diff:.1e}",
            r.auto,
            f"{r.out_mp / med['fast auto']:.2f} ({r.speedup['fast auto']:.2f}x)",
            "-" if r.dpsnr is None else f"{r.dpsnr:+.3f}",
        ]
        if args.upscaler:
            cells += [f"{r.speedup['up fp32']:.2f}x", f"{r.speedup['up auto']:.2f}x"]
        if args.engines:
            cells += [
                f"{r.out_mp / med[k]:.2f} ({r.speedup[k]:.2f}x)" if k in med else "-" for k in ENGINE_COLUMNS
            ]
        if args.compile:
            k = "compile"
            cells.append(f"{r.out_mp / med[k]:.2f} ({r.speedup[k]:.2f}x)" if k in med else "-")
            cells.append(f"{r.compile_s:.0f}" if isinstance(r.compile_s, float) else str(r.compile_s))
        if args.engines or args.compile:
            cells.append(min(med, key=med.get))
        if args.upscaler and (args.engines or args.compile):
            vs = default_vs_best_peer(r.times, r.bf16_ok)
            cells.append("-" if vs is None else f"{vs[0]:.2f} [{vs[1]:.2f}-{vs[2]:.2f}] vs {vs[3]}")
        cells += roofline_cells(r)
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
        print(f"<!-- {case.label}: {time.perf_counter() - t0:.0f} s -->", file=sys.stderr, flush=True)
    json_path = (
        args.json
        if args.json is not None
        else (None if (args.quick or args.models) else RESULTS / "speed.json")
    )
    extra: dict[str, Any] = {
        "long_round_s": LONG_ROUND_S,
        "long_rows_time_warmup": True,
        "short_rows_timing_s": SHORT_ROWS_TIMING_S,
        "max_rounds": MAX_ROUNDS,
    }
    # Every peak is measured a second time, after the rows; the shares in the JSON (and the docs) use the
    # higher of the two, and the rows whose shares fell are printed again.
    changed = {k: v for k, v in remeasure_peaks(device).items() if v[1] > 1.01 * v[0]}
    extra["conv_peaks_first_gflops"] = [
        {"width": w, "precision": DTYPE_NAME[d], "gflops": round(first / 1e9, 1)}
        for (w, d), (first, _) in changed.items()
    ]
    if changed:
        print(
            "\nPeaks measured again after the rows (width: first -> second GFLOP/s): "
            + ", ".join(
                f"{w} {DTYPE_NAME[d]}: {a / 1e9:.0f} -> {b / 1e9:.0f}"
                for (w, d), (a, b) in sorted(changed.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))
            )
        )
        redo = []
        for r in rows:
            before = dict(r.pct_peak)
            r.update_pct_peak(device)
            if r.pct_peak != before:
                redo.append((r.label, *roofline_cells(r)))
        print("\nRows against the higher peaks:\n")
        print(
            fmt_table(["model", "% peak plain / fp32 / auto", "target needs fp32 1.5x / auto 5x"], redo),
            flush=True,
        )
    peaks = sorted({(k[0], k[1]) for k in _PEAK_CACHE}, key=lambda t: (t[0], str(t[1])))
    extra["conv_peaks_gflops"] = [
        {"width": w, "precision": DTYPE_NAME[d], "gflops": round(_PEAK_CACHE[(w, d, str(device))] / 1e9, 1)}
        for w, d in peaks
    ]
    print(
        "\nMeasured 3x3-conv peaks (width: GFLOP/s): "
        + ", ".join(f"{w} {DTYPE_NAME[d]}: {_PEAK_CACHE[(w, d, str(device))] / 1e9:.0f}" for w, d in peaks),
        flush=True,
    )

    ablate = args.ablation if args.ablation is not None else ([] if args.quick else ["rfdn:4", "imdn:4"])
    if ablate:
        print(f"\n## What each rewrite buys ({DTYPE_NAME[resolve_precision('auto', device)]}, cumulative)\n")
        for case in landed_cases(args.shared, ablate, False):
            res = ablation(case, device, rounds, args.shared)
            print(f"**{case.label}**\n")
            print(
                fmt_table(
                    ["step", "MP/s", "x plain", "rewrites"],
                    [(s, f"{mp:.2f}", f"{x:.2f}x", n) for s, mp, x, n in res],
                )
            )
            print(flush=True)

    run_tiling = args.tiling if args.tiling is not None else not args.quick
    if run_tiling:
        print("\n## Tiling overhead (1024x1024 LR, precision auto)\n")
        case = next((c for c in landed_cases(args.shared, ["rfdn:4"], False)), cases[0])
        whole, tiled, plan = tiling_overhead(case, device, max(3, rounds), args.shared)
        print(
            fmt_table(
                ["model", "whole s", "default tiling s", "overhead", "plan"],
                [(case.label, f"{whole:.2f}", f"{tiled:.2f}", f"{100 * (tiled / whole - 1):+.1f}%", plan)],
            )
        )
        extra["tiling_overhead"] = {
            "model": case.label,
            "input": [1024, 1024],
            "whole_s": round(whole, 3),
            "tiled_s": round(tiled, 3),
            "plan": str(plan),
        }
        print(flush=True)
        print("\n## Tiling overhead over a folder (20 uint8 RGB photos, sides 256-1500 px, precision auto)\n")
        f_whole, f_tiled, sizes = folder_overhead(case, device, 2, args.shared)
        print(
            fmt_table(
                ["model", "whole s", "default tiling s", "overhead", "photos"],
                [
                    (
                        case.label,
                        f"{f_whole:.2f}",
                        f"{f_tiled:.2f}",
                        f"{100 * (f_tiled / f_whole - 1):+.1f}%",
                        (
                            f"{len(sizes)}, {min(h * w for h, w in sizes) / 1e6:.2f}-"
                            f"{max(h * w for h, w in sizes) / 1e6:.2f} MP"
                        ),
                    )
                ],
            )
        )
        extra["folder_overhead"] = {
            "model": case.label,
            "sizes": sizes,
            "whole_s": round(f_whole, 3),
            "tiled_s": round(f_tiled, 3),
        }
        print(flush=True)

    if not args.no_memory:
        sizes = args.memory_sizes or ([1500] if args.quick else [1500, 3000])
        case = next((c for c in landed_cases(args.shared, ["rfdn:4"], False)), cases[0])
        print(
            f"\n## Peak memory of `lightsr upscale` ({case.label}, precision auto, "
            f"output {args.memory_format})\n"
        )
        mem_rows = []
        backends: list[str | None] = list(args.memory_backends) if args.memory_backends else [None]
        with tempfile.TemporaryDirectory(prefix="lightsr-bench-") as tmp:
            for side, backend in itertools.product(sizes, backends):
                mb, sec, rc, err = cli_peak_rss(case, side, Path(tmp), args.memory_format, "auto", backend)
                out_mb = side * side * case.record["scale"] ** 2 * 3 / 1e6
                status = "ok" if rc == 0 else f"exit {rc}: {err}"
                mem_rows.append(
                    (
                        f"{side}x{side}",
                        backend or "default",
                        f"{out_mb:.0f} MB",
                        f"{mb:.0f} MB",
                        f"{sec:.0f}",
                        status,
                    )
                )
                extra.setdefault("memory", []).append(
                    {
                        "model": case.label,
                        "input": [side, side],
                        "backend": backend or "default",
                        "output_mb": round(out_mb, 1),
                        "peak_rss_mb": round(mb, 1),
                        "seconds": round(sec, 1),
                        "status": status,
                    }
                )
        print(fmt_table(["input", "backend", "uint8 output", "peak RSS", "seconds", "status"], mem_rows))

    wall = time.perf_counter() - started
    print(
        f"\nbenchmark wall time: {wall:.0f} s; load average at the end: "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    if json_path is not None and str(json_path) != "-":
        extra["wall_seconds"] = round(wall)
        write_json(json_path, rows, machine_info(device), rounds, extra)
        print(f"(results written to {json_path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
