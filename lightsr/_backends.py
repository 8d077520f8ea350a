"""The network as an ONNX graph, and the optional inference engines (ONNX Runtime, OpenVINO) that run it.

Only the network runs here: a float32 ``N x 3 x H x W`` 0..1 tensor in, ``N x 3 x sH x sW`` out. Image
handling, tiling, the precision policy, the NaN/Inf fallback to fp32, progress and errors stay in
``lightsr._engine``, the same on every backend. ``onnx``, ``onnxruntime`` and ``openvino`` are optional
extras: nothing here imports them before a graph or a backend is asked for, and a missing one raises a
:class:`~lightsr.errors.DeviceError` naming the ``pip install`` that fixes it.

The graph is the plain fp32 ``Upscaler.module`` (range conversion inside it), exported by the TorchScript
tracer (``dynamo=False``: 0.1-2 s for most models, ~15 s for FDIWN), else by the dynamo exporter; a graph
whose height and width came out fixed is refused, so every graph here takes any batch, height and width.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from lightsr._tiling import padded_length
from lightsr._version import __version__
from lightsr._zoo import ModelDescriptor, load_manifest
from lightsr.errors import DeviceError, LightSRError

logger = logging.getLogger("lightsr")

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
INPUT_NAME, OUTPUT_NAME = "input", "output"
OPSET = 17
# Compiled OpenVINO models kept per Upscaler, one per input shape (N, 3, H, W). Tiled runs use one window
# shape (plus a smaller last batch), so a few cover a large image; the bound caps memory over a folder of
# differently sized photos (each compiled model holds its own buffers: ~10-60 MB for these networks).
OV_CACHE_SIZE = 4

_EXTRAS = {
    "onnx": "onnxruntime",
    "onnxscript": "onnxruntime",
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
}


def require(module: str, purpose: str) -> Any:
    """Import an optional engine module, or raise a DeviceError naming the extra that installs it."""
    try:
        # Third-party import-time deprecation notices are not the caller's to act on (and must not turn
        # into errors under warnings.simplefilter('error')).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRAS.get(module.split(".")[0], "onnxruntime")
        raise DeviceError(
            f"{purpose} needs the {module.split('.')[0]!r} package, which is not installed ({exc}); "
            f'install it with: pip install "lightsr[{extra}]"'
        ) from None


def metadata(desc: ModelDescriptor, weights_sha256: str | None = None) -> dict[str, str]:
    """What a deployer must know to feed the exported graph: the ONNX ``metadata_props`` / OpenVINO rt_info.

    Example:
        >>> from lightsr._zoo import describe
        >>> metadata(describe("rfdn", 4))["lightsr.scale"]
        '4'
    """
    record = desc.record
    licence = (record.get("license") or {}).get("weights")
    if licence is None:
        licence = ((load_manifest()["models"].get(desc.name) or {}).get("license") or {}).get("weights")
    meta = {
        "lightsr.model": desc.name,
        "lightsr.variant": str(record.get("variant")),
        "lightsr.scale": str(desc.scale),
        "lightsr.input_range": "0..1",
        "lightsr.output_range": "0..1 (not clamped)",
        "lightsr.layout": "NCHW float32 RGB",
        "lightsr.native_input_range": f"0..{desc.input_range:g}",
        "lightsr.size_multiple": str(desc.traits.size_multiple),
        "lightsr.min_size": str(desc.traits.min_size),
        "lightsr.license": licence if licence else "none stated upstream",
        "lightsr.weights_sha256": str((record.get("file") or {}).get("sha256")),
        "lightsr.version": __version__,
    }
    if weights_sha256 is not None:
        meta["lightsr.weights_file_sha256"] = weights_sha256
    return meta


def _trace_side(desc: ModelDescriptor) -> int:
    # Small (tracing cost does not depend on it) but above min_size, so every branch is traced.
    return padded_length(max(desc.traits.min_size, 32), 1, desc.traits.size_multiple)


def _is_dynamic(model: Any) -> bool:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return len(dims) == 4 and all(d.dim_param for i, d in enumerate(dims) if i != 1)


def onnx_model(
    module: nn.Module,
    desc: ModelDescriptor,
    *,
    dynamic: bool = True,
    input_size: tuple[int, int] | None = None,
    weights_sha256: str | None = None,
) -> Any:
    """The fp32 0..1 ``module`` as an ``onnx.ModelProto`` with lightsr's metadata (weights inside).

    ``dynamic``: batch, height and width are free (default); otherwise the graph is fixed at one image of
    ``input_size`` (LR height, width; default 64 x 64). Raises DeviceError when onnx is missing and
    LightSRError when the network has no ONNX form of that kind.
    """
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    h, w = input_size if input_size is not None else (64, 64) if not dynamic else (_trace_side(desc),) * 2
    x = torch.rand(1, 3, h, w) * 0.5 + 0.25
    net = module.float().eval()
    errors: list[str] = []
    model = None
    for dynamo in (False, True):
        try:
            model = _export(net, x, dynamic=dynamic, dynamo=dynamo, min_size=desc.traits.min_size)
        except Exception as exc:  # noqa: BLE001 - try the other exporter, then report both
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            errors.append(f"{'dynamo' if dynamo else 'TorchScript'} exporter: {first}")
            continue
        if dynamic and not _is_dynamic(model):
            errors.append(f"{'dynamo' if dynamo else 'TorchScript'} exporter: height/width came out fixed")
            model = None
            continue
        break
    if model is None:
        fix = (
            "export with dynamic=False (a graph for one input size, input_size=(H, W)), "
            "or run it on the torch backend"
            if dynamic
            else "run it on the torch backend"
        )
        raise LightSRError(f"{desc.name} x{desc.scale} has no ONNX form ({'; '.join(errors)}); {fix}")
    onnx.helper.set_model_props(model, metadata(desc, weights_sha256))
    model.producer_name, model.producer_version = "lightsr", __version__
    return model


def _export(net: nn.Module, x: torch.Tensor, *, dynamic: bool, dynamo: bool, min_size: int) -> Any:
    onnx = importlib.import_module("onnx")
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    # The tracer warns about every Python int it records (shape arithmetic); the check below is what matters.
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        if not dynamo:
            buf = io.BytesIO()
            axes = {
                INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"},
            }
            torch.onnx.export(
                net,
                (x,),
                buf,
                dynamo=False,
                opset_version=OPSET,
                dynamic_axes=axes if dynamic else None,
                **names,
            )
            return onnx.load_from_string(buf.getvalue())
        shapes = None
        if dynamic:
            dim = torch.export.Dim
            shapes = (
                {
                    0: dim("batch"),
                    2: dim("height", min=max(min_size, 2)),
                    3: dim("width", min=max(min_size, 2)),
                },
            )
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(net, (x,), dynamo=True, dynamic_shapes=shapes, optimize=True, **names)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.onnx")
            program.save(path, external_data=False)
            return onnx.load(path)


# --------------------------------------------------------------------------------------------- backends
class OnnxRuntimeBackend:
    """Runs the graph with ONNX Runtime's CPU provider in fp32 (all graph optimisations on).

    ``InferenceSession.run`` is thread-safe, so one session serves every thread.
    """

    name = "onnxruntime"

    def __init__(self, model_bytes: bytes, *, threads: int | None = None):
        ort = require("onnxruntime", "backend='onnxruntime'")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._session.run([OUTPUT_NAME], {INPUT_NAME: _host_array(x)})[0])


def _host_array(x: torch.Tensor) -> np.ndarray:
    """``x`` as a C-contiguous float32 numpy array; a tile window's copy made by numpy, not torch (a torch
    copy leaves PyTorch's OpenMP threads spinning into the engine's call: see lightsr._image._checked_float).
    """
    t = x.detach().to(device="cpu", dtype=torch.float32)
    return np.ascontiguousarray(t.numpy())


class OpenVINOBackend:
    """Runs the graph with OpenVINO on the CPU, in fp32 or bf16, compiled once per input shape.

    Compiled models are kept in an LRU cache of :data:`OV_CACHE_SIZE` shapes; compiling is serialised by a
    lock, and every call gets its own infer request, so threads may share the backend.
    """

    name = "openvino"

    def __init__(
        self,
        model_bytes: bytes,
        *,
        bf16: bool = False,
        threads: int | None = None,
        cache_size: int = OV_CACHE_SIZE,
    ):
        ov = require("openvino", "backend='openvino'")
        self._core = ov.Core()
        # read_model takes the ONNX bytes directly (weights are inside: no external data).
        self._model = self._core.read_model(model=model_bytes, weights=b"")
        self._config = {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        }
        self.bf16 = bf16
        self.cache_size = max(1, int(cache_size))
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.compilations = 0  # how many shapes were compiled (tests and diagnostics)

    def compiled_for(self, shape: tuple[int, ...]) -> Any:
        with self._lock:
            hit = self._compiled.get(shape)
            if hit is not None:
                self._compiled.move_to_end(shape)
                return hit
            model = self._model.clone()
            model.reshape({INPUT_NAME: list(shape)})
            compiled = self._core.compile_model(model, "CPU", self._config)
            self.compilations += 1
            self._compiled[shape] = compiled
            while len(self._compiled) > self.cache_size:
                self._compiled.popitem(last=False)
            return compiled

    @property
    def cached_shapes(self) -> list[tuple[int, ...]]:
        with self._lock:
            return list(self._compiled)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = _host_array(x)
        request = self.compiled_for(tuple(arr.shape)).create_infer_request()
        request.infer({0: arr})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


def make_backend(
    backend: str,
    module: nn.Module,
    desc: ModelDescriptor,
    *,
    dtype: torch.dtype,
    device: torch.device,
    bf16_units: bool,
) -> OnnxRuntimeBackend | OpenVINOBackend | None:
    """The engine for ``backend``, after checking it can honour ``dtype`` on ``device``.

    None means torch: asked for, or the network has no dynamic-shape ONNX form (logged as a warning).
    Raises DeviceError for an unknown backend, a non-CPU device, a precision the engine does not run, or
    a missing package.
    """
    if backend not in BACKENDS:
        raise DeviceError(f"unknown backend {backend!r}; use one of {', '.join(repr(b) for b in BACKENDS)}")
    if backend == "torch":
        return None
    if device.type != "cpu":
        raise DeviceError(f"backend={backend!r} runs on the CPU only; use device='cpu' or backend='torch'")
    label = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if backend == "onnxruntime" and dtype is not torch.float32:
        raise DeviceError(
            f"backend='onnxruntime' runs in fp32 only, {label} was asked for; use precision='fp32' "
            "(or 'auto'), or backend='openvino' / 'torch' for bf16"
        )
    if backend == "openvino":
        if dtype is torch.float16:
            raise DeviceError(
                "backend='openvino' runs fp32 or bf16 on the CPU; use precision='fp32' or 'bf16'"
            )
        if dtype is torch.bfloat16 and not bf16_units:
            raise DeviceError(
                "backend='openvino' in bf16 needs a CPU with bf16 units (AMX-BF16 or AVX512-BF16), which "
                "this one lacks; use precision='fp32' (or 'auto')"
            )
        require("openvino", "backend='openvino'")
    else:
        require("onnxruntime", "backend='onnxruntime'")
    try:
        model_bytes = onnx_model(module, desc).SerializeToString()
    except DeviceError:
        raise
    except LightSRError as exc:  # no dynamic-shape graph (SAFMN): the model still works, on torch
        logger.warning("%s x%d runs on torch instead of %s: %s", desc.name, desc.scale, backend, exc)
        return None
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(model_bytes)
    return OpenVINOBackend(model_bytes, bf16=dtype is torch.bfloat16)


# backend='auto' on a CPU: the engine measured fastest per (model, scale) and compute precision, among those
# whose Set5 Y-PSNR stays within 0.02 dB of fp32 torch (the precision table of docs/tiling-and-precision.md,
# benchmarks/quality.py --precision --backends). Records not listed, and engines that are not installed, run
# on torch. Measured on an AMD EPYC with AVX512-BF16 (no AMX), 2 threads, benchmarks/speed.py --engines
# --upscaler (quiet machine, 2026-12-04; docs/performance.md has the run):
# * bf16: OpenVINO bf16 ran 1.04-1.6x lightsr's torch bf16 fast path on every bf16-safe record it can run
#   (Set5 -0.003..-0.013 dB). Left out: FDIWN x4, whose OpenVINO model compiles for about 10 s per new input
#   size (Set5's 5 sizes: 50 s against torch's 1-2 s of arithmetic per image), so a folder of photos of
#   mixed sizes would be slower; SAFMN, which has no dynamic-shape ONNX graph.
# * fp32, used only when precision='auto' resolves to fp32 (a bf16-unsafe record, or a CPU without bf16
#   units): the engine that ran at least 1.15x lightsr's torch fp32 path (Upscaler.upscale) and fastest of
#   the two: OpenVINO on bsrn x2/x3/x4 (4.1x, 2.3x, 1.5x), carn-m x2/x3/x4 (2.9-3.4x), pan x2/x3/x4
#   (1.6-1.9x), imdn x2/x3 (1.75x, 1.17x), rlfn x2 and rlfn-s x2 (1.7x), and, in two runs with the settled
#   timing of benchmarks/speed.py, imdn-rtc x2 (1.2-1.6x), rlfn-s x4 (1.1-1.2x) and SPAN x4 (1.2x); ONNX
#   Runtime on imdn-rte x2 (1.47x, OpenVINO 1.35x). Their output stays within 1e-4 of torch fp32 and Set5
#   within 0.005 dB (tests/test_backends.py). Level or slower, so left on torch: rfdn x4 (1.12x), imdn x4
#   (1.09x), imdn-ntire22, rlfn x4, rlfn-ntire, FDIWN. An explicit precision='fp32' keeps torch: it is
#   what the reference figures and the manifest's metrics are.
MEASURED_FASTEST: dict[tuple[str, int], dict[str, str]] = {
    # bf16-safe records: OpenVINO bf16 under bf16, OpenVINO fp32 (where measured faster) on CPUs without bf16.
    **{
        (name, scale): {"bf16": "openvino"}
        for name, scale in (("rfdn", 4), ("imdn", 4), ("imdn-ntire22", 4), ("rlfn", 4), ("rlfn-ntire", 4))
    },
    **{
        (name, scale): {"bf16": "openvino", "fp32": "openvino"}
        for name, scale in (
            ("imdn", 3),
            ("bsrn", 4),
            ("carn-m", 2),
            ("carn-m", 3),
            ("carn-m", 4),
            ("pan", 3),
            ("pan", 4),
        )
    },
    ("imdn-rte", 2): {"bf16": "openvino", "fp32": "onnxruntime"},
    # bf16-unsafe records: precision='auto' runs them in fp32.
    **{
        (name, scale): {"fp32": "openvino"}
        for name, scale in (
            ("imdn", 2),
            ("imdn-rtc", 2),
            ("rlfn", 2),
            ("rlfn-s", 2),
            ("rlfn-s", 4),
            ("bsrn", 2),
            ("bsrn", 3),
            ("pan", 2),
            ("span-ntire24", 4),
        )
    },
}


def installed(backend: str) -> bool:
    """Whether the package behind ``backend`` can be imported (without importing it)."""
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino"}.get(backend)
    if module is None:
        return backend == "torch"
    return importlib.util.find_spec(module) is not None and importlib.util.find_spec("onnx") is not None


def resolve_backend(
    backend: str,
    desc: ModelDescriptor,
    device: torch.device,
    dtype: torch.dtype,
    *,
    compile: bool = False,
    precision: str = "auto",
) -> str:
    """The backend a load runs on: ``backend`` itself, or for 'auto' the measured choice (torch off the CPU).

    ``precision`` is what the load asked for: the table's fp32 entries apply only when 'auto' resolved to
    fp32, so an explicit ``precision='fp32'`` stays on torch (the reference figures' engine).

    Example:
        >>> from lightsr._zoo import describe
        >>> resolve_backend("auto", describe("rfdn", 4), torch.device("cuda"), torch.float16)
        'torch'
    """
    if backend not in BACKENDS:
        raise DeviceError(f"unknown backend {backend!r}; use one of {', '.join(repr(b) for b in BACKENDS)}")
    if backend != "auto":
        return backend
    if device.type != "cpu" or compile:
        return "torch"
    label = {torch.float32: "fp32" if precision == "auto" else None, torch.bfloat16: "bf16"}.get(dtype)
    choice = MEASURED_FASTEST.get((desc.name, desc.scale), {}).get(label or "")
    return choice if choice is not None and installed(choice) else "torch"
