"""Inference rewrite of a network for speed: folded constants, fused post-ops, one dtype and layout.

:func:`optimize_for_inference` traces the 0..1 module with ``torch.fx`` and rewrites the graph so it does
the same arithmetic with fewer passes over memory. Every rewrite is generic (found by pattern, never by
model family, but for ``inference_forms``) and exact up to floating-point rounding; :data:`PASSES` lists
them in the order they run:

``inference_forms``
    Submodules that offer an ``inference_form()`` (an equivalent module that is faster to run, e.g.
    FDIWN's shuffle attention without its channel-splitting reshape) are swapped for it before tracing:
    the one rewrite a network asks for by name, since no graph pattern can recognise it.
``channel_shuffle``
    ``x.reshape(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)`` -> :func:`shuffle_channels`,
    which permutes a channels-last map in its own layout (the reshape copy would return NCHW).
``fold_input_scale``
    ``conv(x * 255)`` -> conv with weights x 255 (the ``NativeRange`` adapter of 0..255 checkpoints).
``fold_output_scale``
    ``pixel_shuffle(conv(f)) / 255`` (also sums of such) -> the conv's weights and bias / 255.
``fold_scalar_mul``
    ``conv(x) * s`` with a constant scalar or per-channel ``s`` (learned residual scales) -> scaled weights.
``spatial_stats``
    ``m = x.mean((2, 3)); ((x - m) ** 2).mean((2, 3))`` (contrast-aware channel attention) and global
    average pooling -> :func:`_spatial_mean_var` / :func:`_spatial_mean`: the same values as the plain
    ops, with the subtraction through :func:`channel_affine` and the square in place.
``split_conv``
    ``torch.split(act(conv(x)), sizes, dim=1)`` (IMDN's distillation) -> one convolution per part, so
    each part is dense in channels-last instead of a strided slice the next convolution must copy; only
    where the parts need no more 16-channel blocks than the whole (:func:`_split_pays`).
``channel_scale``
    ``conv(x * a)`` with a per-image channel-attention vector ``a`` -> the conv's weights scaled by
    ``a`` on each call (C_out x C_in x k x k numbers instead of a full feature map).
``fuse_unary``
    ``act(conv(x))`` -> one oneDNN convolution with the activation as a post-op (ReLU, LeakyReLU,
    GELU, SiLU, sigmoid, tanh).
``fuse_add``
    ``conv(x) + y [-> relu]`` -> one oneDNN convolution with a binary-add (and ReLU) post-op; another
    activation after the sum runs in place on it.
``mul_add``
    ``x * a + y`` (attention-weighted residuals) -> ``torch.addcmul(y, x, a)``: one pass instead of two.
``channel_affine``
    ``x * a + b``, ``x + b``, ``x - b`` with per-channel ``a``, ``b`` (N x C x 1 x 1: statistics-based
    gates, biases) -> :func:`channel_affine`, which runs them as a depthwise 1x1 convolution where
    PyTorch's broadcasting kernels are slow (bf16 channels-last on the CPU: about 10x).

Weights are cast once to the compute dtype and stored channels-last; the input is converted once. On a
CPU in fp32/bf16, convolutions run through ``torch.ops.mkldnn._convolution_pointwise``; elsewhere
(CUDA, MPS, fp16) the same graph runs ``F.conv2d`` plus eager post-ops, so one code path serves all.
The result keeps no per-call state, so threads may share it. Networks ``torch.fx`` cannot trace fall
back to a plain cast + channels-last copy.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

logger = logging.getLogger("lightsr")

__all__ = [
    "PASSES",
    "FastModule",
    "FusedConv2d",
    "channel_affine",
    "optimize_for_inference",
    "shuffle_channels",
]


# --------------------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class _Act:
    """An activation in oneDNN's terms: post-op name, its scalars, its algorithm string (GELU only)."""

    attr: str
    scalars: tuple[float, ...] = ()
    algorithm: str = ""

    def apply(self, t: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """The same activation with eager PyTorch ops (the path without oneDNN)."""
        if self.attr == "relu":
            return t.relu_() if inplace else t.relu()
        if self.attr == "leaky_relu":
            return F.leaky_relu(t, self.scalars[0], inplace=inplace)
        if self.attr == "gelu":
            return F.gelu(t, approximate=self.algorithm or "none")
        if self.attr == "sigmoid":
            return t.sigmoid_() if inplace else t.sigmoid()
        if self.attr == "swish":
            return F.silu(t, inplace=inplace)
        if self.attr == "tanh":
            return t.tanh_() if inplace else t.tanh()
        raise AssertionError(f"unknown activation {self.attr!r}")


_NO_ACT = _Act("none")


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _activation_of(node: fx.Node, modules: dict[str, nn.Module]) -> _Act | None:
    """The activation ``node`` applies to its first argument, or None if it is not a plain activation."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        kinds: dict[type, Callable[[Any], _Act]] = {
            nn.ReLU: lambda m: _Act("relu"),
            nn.LeakyReLU: lambda m: _Act("leaky_relu", (float(m.negative_slope),)),
            nn.GELU: lambda m: _Act("gelu", (), "tanh" if m.approximate == "tanh" else "none"),
            nn.Sigmoid: lambda m: _Act("sigmoid"),
            nn.SiLU: lambda m: _Act("swish"),
            nn.Tanh: lambda m: _Act("tanh"),
        }
        make = kinds.get(type(m))
        return make(m) if make is not None else None
    if node.op == "call_function":
        t = node.target
        if any(isinstance(a, fx.Node) for a in node.args[1:]) or any(
            isinstance(v, fx.Node) for v in node.kwargs.values()
        ):
            return None
        if t in (F.relu, torch.relu, torch.relu_):
            return _Act("relu")
        if t is F.leaky_relu:
            slope = _arg(node, 1, "negative_slope", 0.01)
            return _Act("leaky_relu", (float(slope),)) if isinstance(slope, (int, float)) else None
        if t is F.gelu:
            return _Act("gelu", (), "tanh" if node.kwargs.get("approximate", "none") == "tanh" else "none")
        if t in (torch.sigmoid, F.sigmoid):
            return _Act("sigmoid")
        if t is F.silu:
            return _Act("swish")
        if t in (torch.tanh, F.tanh):
            return _Act("tanh")
        return None
    if node.op == "call_method" and node.target in ("relu", "sigmoid", "tanh") and len(node.args) == 1:
        return _Act(str(node.target))
    return None


# ------------------------------------------------------------------------------- the fused conv module
class FusedConv2d(nn.Module):
    """A 2-D convolution with optional post-ops: ``act(conv(x * in_scale) [+ other])``.

    On a CPU in fp32/bf16 it runs as one oneDNN primitive (``torch.ops.mkldnn._convolution_pointwise``),
    elsewhere as ``F.conv2d`` followed by eager ops. Weights are cast to the compute dtype and the
    channels-last layout once, in :meth:`finalize`. Calls change no state.
    """

    def __init__(self, conv: nn.Conv2d, act: _Act = _NO_ACT, binary: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = (
            None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        )
        self.stride = list(conv.stride)
        self.padding = list(conv.padding)  # type: ignore[arg-type]
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.act = act
        self.binary = binary
        self.onednn = False
        # fp16 on a CPU: the conv runs in fp32 on the fp16 values and is rounded back (see finalize).
        self.upcast = False
        # Convs on 1x1 maps (attention vectors after global pooling) cost more in oneDNN set-up than in
        # arithmetic; they stay on F.conv2d.
        self.pointlike = False

    def extra_repr(self) -> str:
        post = "+".join(p for p in (self.binary, None if self.act.attr == "none" else self.act.attr) if p)
        return (
            f"{tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}, post={post or 'none'}"
        )

    def finalize(self, dtype: torch.dtype, device: torch.device, channels_last: bool = True) -> None:
        """Cast the weights to the compute dtype and layout; choose the oneDNN path where it exists."""
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.weight.data = self.weight.data.to(device=device, dtype=dtype).contiguous(memory_format=layout)
        if self.bias is not None:
            self.bias.data = self.bias.data.to(device=device, dtype=dtype)
        # oneDNN's fused primitive pays in channels-last; on NCHW maps (and on 1x1 ones) PyTorch's own
        # dispatch plus an in-place post-op is as fast (FDIWN fp32 NCHW: 0.8x plain when fused).
        self.onednn = (
            device.type == "cpu"
            and dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available()
            and channels_last
            and not self.pointlike
        )
        # PyTorch's CPU fp16 convolution is a slow generic kernel (48 -> 48 channels, 3x3, 128 x 128, one
        # thread on an AVX512-BF16 EPYC: 35 ms against 3 ms in fp32) that accumulates in fp32 anyway: the
        # same arithmetic in an fp32 kernel on the fp16 values, rounded to fp16, differs from it by one fp16
        # ulp in 0.2% of outputs, with the same error against float64. fp16 is never 'auto' on a CPU; this
        # is for forced fp16 (and the fp16 quality table, which stands in for CUDA's fp16 there).
        self.upcast = device.type == "cpu" and dtype == torch.float16

    def forward(
        self, x: torch.Tensor, other: torch.Tensor | None = None, in_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``act(conv(x * in_scale) [+ other])``; ``in_scale`` is a per-channel N x C x 1 x 1 factor.

        For one image, ``in_scale`` scales a copy of the weights instead of the whole feature map.
        """
        weight = self.weight
        if in_scale is not None:
            if in_scale.shape[0] == 1:
                weight = weight * in_scale.reshape(1, -1, 1, 1)
            else:
                x = x * in_scale
        if self.onednn:
            if other is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x,
                    weight,
                    self.bias,
                    self.padding,
                    self.stride,
                    self.dilation,
                    self.groups,
                    self.act.attr,
                    list(self.act.scalars),
                    self.act.algorithm,
                )
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x,
                other,
                weight,
                self.bias,
                self.padding,
                self.stride,
                self.dilation,
                self.groups,
                self.binary,
                None,
                None if self.act.attr == "none" else self.act.attr,
                list(self.act.scalars),
                self.act.algorithm,
            )
        if self.upcast:
            bias = None if self.bias is None else self.bias.float()
            y = F.conv2d(
                x.float(), weight.float(), bias, self.stride, self.padding, self.dilation, self.groups
            )
            y = y.to(x.dtype)
        else:
            y = F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if other is not None:
            y = y.add_(other)
        return y if self.act.attr == "none" else self.act.apply(y, inplace=True)


# ------------------------------------------------------------------------------------------- tracing
class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer with the root's parameter, buffer and module names looked up in a table.

    The default tracer finds the name of each parameter the network touches by walking every named
    parameter of the root, once per access: quadratic in the network's size. FDIWN x4 touches 312 weights
    directly; its trace took 1.8 s, 1.0 s with the tables (3.8 and 1.6 s without its inference forms). The
    tables are built once per trace; the module is not changed while it is traced, so they stay valid.
    """

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        if isinstance(root, nn.Module):
            self._names: dict[str, dict[int, str]] = {
                "parameter": {id(p): n for n, p in root.named_parameters()},
                "buffer": {id(b): n for n, b in root.named_buffers()},
                "module": {id(m): n for n, m in root.named_modules()},
            }
        return super().trace(root, concrete_args)

    def _name_of(self, value: Any) -> str | None:
        names = getattr(self, "_names", None)
        if names is None or isinstance(value, fx.Proxy):
            return None
        if isinstance(value, nn.Parameter):
            return names["parameter"].get(id(value))
        if isinstance(value, torch.Tensor):
            return names["buffer"].get(id(value))
        if isinstance(value, nn.Module):
            return names["module"].get(id(value))
        return None

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, fx.Proxy]) -> Any:
        tensor_attr = isinstance(attr_val, nn.Parameter) or (
            self.proxy_buffer_attributes and isinstance(attr_val, torch.Tensor)
        )
        name = self._name_of(attr_val) if tensor_attr and not self.param_shapes_constant else None
        if name is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def create_arg(self, a: Any) -> Any:
        name = self._name_of(a)
        if name is not None:
            return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)


def _symbolic_trace(module: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` through :class:`_Tracer`."""
    tracer = _Tracer()
    graph = tracer.trace(module)
    return fx.GraphModule(tracer.root, graph, type(module).__name__)


# ------------------------------------------------------------------------------------ graph helpers
class _Rewriter:
    """The graph being rewritten, with its module table and call counts kept up to date cheaply."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.graph = gm.graph
        self.modules: dict[str, nn.Module] = dict(gm.named_modules())
        self.calls: Counter[str] = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
        self._next = 0

    def add(self, module: nn.Module, kind: str) -> str:
        while True:
            name = f"_fast_{kind}_{self._next}"
            self._next += 1
            if name not in self.modules:
                break
        self.gm.add_submodule(name, module)
        self.modules[name] = module
        return name

    def retarget(self, node: fx.Node, name: str) -> None:
        self.calls[str(node.target)] -= 1
        node.target = name
        self.calls[name] += 1

    def own(self, node: fx.Node) -> nn.Module:
        """The module ``node`` calls, made private to this call site (copied if other nodes call it too).

        Networks that reuse a block (CARN-M's shared residual blocks, FDIWN's twice-run groups) would
        otherwise see one call's folded constants leak into the other call.
        """
        module = self.modules[str(node.target)]
        if self.calls[str(node.target)] > 1:
            module = copy.deepcopy(module)
            self.retarget(node, self.add(module, "site"))
        return module

    def fused(self, node: fx.Node, act: _Act = _NO_ACT, binary: str | None = None) -> FusedConv2d:
        """Make ``node`` call a private FusedConv2d (converted from its nn.Conv2d) with these post-ops."""
        module = self.own(node)
        if not isinstance(module, FusedConv2d):
            module = FusedConv2d(module)  # type: ignore[arg-type]
            self.retarget(node, self.add(module, "conv"))
        module.act, module.binary = act, binary
        return module

    def erase(self, node: fx.Node) -> None:
        if node.op == "call_module":
            self.calls[str(node.target)] -= 1
        self.graph.erase_node(node)

    def conv(self, node: Any, *, plain: bool = False) -> Any:
        """The zero-padded convolution ``node`` calls (nn.Conv2d, or FusedConv2d without post-ops), or None.

        ``plain=True`` accepts only an nn.Conv2d (for rewrites that rebuild the layer).
        """
        if not isinstance(node, fx.Node) or node.op != "call_module":
            return None
        m = self.modules.get(str(node.target))
        if type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            return m
        if plain or not isinstance(m, FusedConv2d) or m.binary is not None or m.act.attr != "none":
            return None
        return m


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _is_binary(node: fx.Node, ops: tuple[Any, ...], method: str) -> bool:
    if node.op == "call_function" and node.target in ops:
        return len(node.args) == 2 and not node.kwargs
    return node.op == "call_method" and node.target == method and len(node.args) == 2 and not node.kwargs


def _is_add(node: fx.Node) -> bool:
    return _is_binary(node, (operator.add, torch.add), "add")


def _is_mul(node: fx.Node) -> bool:
    return _is_binary(node, (operator.mul, torch.mul), "mul")


def _is_sub(node: fx.Node) -> bool:
    return _is_binary(node, (operator.sub, torch.sub), "sub")


def _is_pixel_shuffle(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(str(node.target))) is nn.PixelShuffle
    return node.op == "call_function" and node.target in (F.pixel_shuffle, torch.pixel_shuffle)


def _scale_conv_(conv: Any, factor: torch.Tensor | float, *, inputs: bool = False) -> None:
    """Multiply a conv's outputs (weights and bias, per output channel) or only its inputs by ``factor``."""
    with torch.no_grad():
        w = conv.weight
        if inputs:
            w.mul_(factor)
            return
        f = torch.as_tensor(factor, dtype=w.dtype, device=w.device).reshape(-1)
        w.mul_(f.reshape(-1, 1, 1, 1))
        if conv.bias is not None:
            conv.bias.mul_(f)


# ----------------------------------------------------------------------------------------- passes
def _pass_fold_input_scale(rw: _Rewriter) -> int:
    """``conv(x * c)`` -> ``conv'(x)`` with weights x c, when every user of ``x * c`` is a zero-padded
    conv."""
    count = 0
    for node in list(rw.graph.nodes):
        if not _is_mul(node):
            continue
        a, b = node.args
        x, c = (a, _number(b)) if isinstance(a, fx.Node) else (b, _number(a))
        if c is None or not isinstance(x, fx.Node) or x.op != "placeholder":
            continue
        users = list(node.users)
        if not users or any(rw.conv(u) is None or u.args[0] is not node or len(u.args) != 1 for u in users):
            continue
        for user in users:
            _scale_conv_(rw.own(user), c, inputs=True)
        node.replace_all_uses_with(x)
        rw.erase(node)
        count += 1
    return count


def _linear_sources(rw: _Rewriter, node: Any, out: list[fx.Node]) -> bool:
    """Collect the single-use convs whose outputs ``node`` is a pixel-shuffled and/or summed copy of.

    True when scaling those convs' outputs scales ``node`` exactly.
    """
    if not isinstance(node, fx.Node) or len(node.users) != 1:
        return False
    if rw.conv(node) is not None:
        out.append(node)
        return True
    if _is_pixel_shuffle(node, rw.modules):
        return _linear_sources(rw, node.args[0], out)
    if _is_add(node):
        return all(_linear_sources(rw, a, out) for a in node.args)
    return False


def _pass_fold_output_scale(rw: _Rewriter) -> int:
    """``pixel_shuffle(conv(f)) / c`` (also sums of such) -> the same with the conv's weights and bias / c."""
    output = next(n for n in rw.graph.nodes if n.op == "output")
    node = output.args[0]
    if not isinstance(node, fx.Node) or node.op != "call_function" or len(node.args) != 2 or node.kwargs:
        return 0
    c = _number(node.args[1])
    if node.target in (operator.truediv, torch.div) and c:
        factor = 1.0 / c
    elif node.target in (operator.mul, torch.mul) and c is not None:
        factor = c
    else:
        return 0
    sources: list[fx.Node] = []
    if not _linear_sources(rw, node.args[0], sources):
        return 0
    for src in sources:
        _scale_conv_(rw.own(src), factor)
    node.replace_all_uses_with(node.args[0])
    rw.erase(node)
    return len(sources)


def _scale_operand(rw: _Rewriter, node: Any, cout: int) -> torch.Tensor | float | None:
    """A scalar or per-output-channel constant (a number or a frozen tensor attribute), else None."""
    num = _number(node)
    if num is not None:
        return num
    if isinstance(node, fx.Node) and node.op == "get_attr":
        t = _fetch_attr(rw.gm, str(node.target))
        if isinstance(t, torch.Tensor) and (
            t.numel() == 1 or (t.numel() == cout and t.shape[-3:] == (cout, 1, 1))
        ):
            return float(t) if t.numel() == 1 else t.detach().reshape(-1).clone()
    return None


def _pass_fold_scalar_mul(rw: _Rewriter) -> int:
    """``conv(x) * s`` (s a number, or a learned scalar / per-channel scale) -> conv with scaled weights."""
    count = 0
    for node in list(rw.graph.nodes):
        if not _is_mul(node):
            continue
        for conv_node, other in (node.args, node.args[::-1]):
            conv = rw.conv(conv_node)
            if conv is None or len(conv_node.users) != 1:
                continue
            factor = _scale_operand(rw, other, conv.weight.shape[0])
            if factor is None or _shape(node) != _shape(conv_node):
                continue  # not a constant, or it broadcasts the conv output to a larger shape
            _scale_conv_(rw.own(conv_node), factor)
            node.replace_all_uses_with(conv_node)
            rw.erase(node)
            count += 1
            break
    return count


def _observed() -> bool:
    """Whether a ``TorchFunctionMode`` watches torch calls, as lightsr's tile-statistics capture does.

    The statistics helpers then make exactly the calls of the code they replaced (``x.mean((2, 3))``,
    ``((x - m) ** 2).mean((2, 3))``), so the observer sees the same whole-map reductions, in the same
    order, as in the plain module, and can gather and replay them across tiles.
    """
    probe = getattr(torch._C, "_is_torch_function_mode_enabled", None)
    return bool(probe()) if probe is not None else False


def _spatial_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and population variance over H and W, as N x C x 1 x 1 in ``x.dtype``.

    Bit-identical to the plain ``m = x.mean((2, 3)); ((x - m) ** 2).mean((2, 3))`` it replaces, but the
    difference goes through :func:`channel_affine` and is squared in place. Under an observing
    ``TorchFunctionMode`` it makes the replaced calls themselves (see :func:`_observed`).

    A chunked, cache-resident variant (one read of the map, Chan's formula) ran here single-threaded until
    2026-12-04. Measured against this one at one thread (AMD EPYC, benchmarks' 1280x720 outputs): FDIWN
    x4 bf16 14% slower, BSRN x4 bf16 11% faster, IMDN x2/x4 and IMDN-RTC within 6%; and its bf16 results
    differed from the plain ops by up to 3e-2, so an image's output depended on the thread count. Removed.

    Example:
        >>> x = torch.rand(2, 3, 70, 90).contiguous(memory_format=torch.channels_last)
        >>> m, v = _spatial_mean_var(x)
        >>> bool(torch.allclose(v, x.var(dim=(2, 3), unbiased=False, keepdim=True), atol=1e-6))
        True
    """
    mean = x.mean(dim=(2, 3), keepdim=True)
    if _observed():
        return mean, (x - mean).pow(2).mean(dim=(2, 3), keepdim=True)
    # The difference through channel_affine: in bf16 channels-last PyTorch's broadcast subtraction is the
    # slow part (24 x 240 x 427: 2.3 ms against 0.22 ms; the same values, as both round the fp32
    # difference once). Squaring it in place: one full-size map fewer to allocate and write (24 x 180 x
    # 320 fp32: 0.56 ms against 0.83 ms; 64 channels: 2.7 against 4.1).
    dev = channel_affine(x, None, -mean)
    return mean, dev.mul_(dev).mean(dim=(2, 3), keepdim=True)


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean over H and W as N x C x 1 x 1: what ``AdaptiveAvgPool2d(1)`` gives."""
    return x.mean(dim=(2, 3), keepdim=True)


def _spatial_reduction(node: fx.Node, method: str) -> fx.Node | None:
    """``x`` if ``node`` is ``<method>(x, dim=(2, 3) or (-2, -1), keepdim=True)`` of a 4-D ``x``,
    else None."""
    is_call = (node.op == "call_method" and node.target == method) or (
        node.op == "call_function" and node.target is getattr(torch, method, None)
    )
    if not is_call or not node.args or node.kwargs.get("dtype") is not None:
        return None
    dims, keep = _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False)
    src = node.args[0]
    shape = _shape(src)
    if shape is None or len(shape) != 4 or keep is not True or not isinstance(dims, (tuple, list)):
        return None
    if len(dims) != 2 or sorted(d % 4 for d in dims if isinstance(d, int)) != [2, 3]:
        return None
    return src  # type: ignore[return-value]


def _is_global_avg_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1), [1, 1])
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        return _arg(node, 1, "output_size", None) in (1, (1, 1), [1, 1])
    return False


def _square_of(node: fx.Node) -> Any:
    """``d`` if ``node`` is ``d ** 2``, ``d.pow(2)``, ``torch.pow(d, 2)``, ``d.square()`` or ``d * d``."""
    if node.op == "call_function" and node.target in (operator.pow, torch.pow) and len(node.args) == 2:
        return node.args[0] if node.args[1] == 2 else None
    if node.op == "call_method" and node.target == "pow" and len(node.args) == 2:
        return node.args[0] if node.args[1] == 2 else None
    if (node.op == "call_method" and node.target == "square") or (
        node.op == "call_function" and node.target is torch.square
    ):
        return node.args[0]
    if _is_mul(node):
        return node.args[0] if node.args[0] is node.args[1] else None
    return None


def _pass_spatial_stats(rw: _Rewriter) -> int:
    """Global channel statistics (contrast-aware attention, global average pooling) in one helper call.

    ``m = x.mean((2, 3), keepdim=True); v = ((x - m) ** 2).mean((2, 3), keepdim=True)`` becomes one
    :func:`_spatial_mean_var`; a lone spatial mean or ``AdaptiveAvgPool2d(1)`` becomes
    :func:`_spatial_mean` (``x.mean``).
    """
    count, graph = 0, rw.graph
    for node in list(graph.nodes):
        x = _spatial_reduction(node, "mean")
        if x is None:
            if _is_global_avg_pool(node, rw.modules) and len(_shape(node.args[0]) or ()) == 4:
                with graph.inserting_before(node):
                    mean = graph.call_function(_spatial_mean, (node.args[0],))
                mean.meta = dict(node.meta)
                node.replace_all_uses_with(mean)
                rw.erase(node)
                count += 1
            continue
        found = None
        for d in list(node.users):
            if not (_is_sub(d) and d.args == (x, node) and len(d.users) == 1):
                continue
            sq = next(iter(d.users))
            if _square_of(sq) is not d or len(sq.users) != 1:
                continue
            v = next(iter(sq.users))
            if _spatial_reduction(v, "mean") is sq:
                found = (d, sq, v)
                break
        with graph.inserting_before(node):
            if found is not None:
                mv = graph.call_function(_spatial_mean_var, (x,))
                mean = graph.call_function(operator.getitem, (mv, 0))
                var = graph.call_function(operator.getitem, (mv, 1))
            else:
                mean = graph.call_function(_spatial_mean, (x,))
        mean.meta = dict(node.meta)
        if found is not None:
            d, sq, v = found
            var.meta = dict(v.meta)
            v.replace_all_uses_with(var)
            for dead in (v, sq, d):
                rw.erase(dead)
        node.replace_all_uses_with(mean)
        rw.erase(node)
        count += 1
    return count


def _split_sizes(node: fx.Node, channels: int) -> list[int] | None:
    """Channel sizes of a ``torch.split`` / ``.split`` / ``torch.chunk`` / ``.chunk`` along dim 1."""
    if node.op == "call_function" and node.target in (torch.split, torch.chunk):
        kind = "split" if node.target is torch.split else "chunk"
    elif node.op == "call_method" and node.target in ("split", "chunk"):
        kind = str(node.target)
    else:
        return None
    spec = _arg(node, 1, "split_size_or_sections" if kind == "split" else "chunks", None)
    if spec is None and kind == "split":
        spec = node.kwargs.get("split_size")
    if _arg(node, 2, "dim", 0) not in (1, -3):
        return None
    if kind == "chunk":
        if not isinstance(spec, int) or spec < 1:
            return None
        spec = math.ceil(channels / spec)
    if isinstance(spec, int) and spec > 0:
        sizes = [spec] * (channels // spec) + ([channels % spec] if channels % spec else [])
    elif isinstance(spec, (list, tuple)) and all(isinstance(s, int) for s in spec):
        sizes = list(spec)
    else:
        return None
    return sizes if sum(sizes) == channels else None


# oneDNN's CPU convolutions compute output channels in blocks of 16 (one AVX-512 register of fp32), so
# a 12->3 convolution costs as much as 12->12 (3.7 ms each at 640x360, channels-last fp32). AVX2-only
# CPUs use blocks of 8, where 10 -> 5 + 5 would cost nothing extra; the rule is measured on AVX-512 only.
_CHANNEL_BLOCK = 16


def _split_pays(sizes: Sequence[int]) -> bool:
    """Whether one convolution per part costs no more channel blocks than the whole convolution.

    IMDN's 64 -> 16 + 48 splits for free (4 blocks either way); IMDN-RTC's 12 -> 3 + 9 would run two
    full-cost convolutions where one did (measured: 1.03x plain with the split, 1.38x without).
    """
    blocks = sum(-(-size // _CHANNEL_BLOCK) for size in sizes)
    return blocks <= -(-sum(sizes) // _CHANNEL_BLOCK)


def _pass_split_conv(rw: _Rewriter) -> int:
    """``parts = split(act(conv(x)), sizes, dim=1)`` -> ``parts[i] = act(conv_i(x))``, one conv per part."""
    count, graph = 0, rw.graph
    for node in list(graph.nodes):
        if node.op not in ("call_function", "call_method") or not node.args:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or len(src.users) != 1:
            continue
        act = _activation_of(src, rw.modules)
        conv_node = src.args[0] if act is not None else src
        if act is not None and (not isinstance(conv_node, fx.Node) or len(conv_node.users) != 1):
            continue
        conv = rw.conv(conv_node, plain=True)
        if conv is None or conv.groups != 1 or len(conv_node.args) != 1:  # type: ignore[union-attr]
            continue
        sizes = _split_sizes(node, conv.out_channels)
        users = list(node.users)
        if sizes is None or len(sizes) < 2 or not users or not _split_pays(sizes):
            continue
        if any(
            u.op != "call_function" or u.target is not operator.getitem or not isinstance(u.args[1], int)
            for u in users
        ):
            continue
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        parts: dict[int, fx.Node] = {}
        with graph.inserting_before(node):
            for u in users:
                i = u.args[1] % len(sizes)
                if i in parts:
                    continue
                part = nn.Conv2d(
                    conv.in_channels,
                    sizes[i],
                    conv.kernel_size,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    1,
                    conv.bias is not None,
                    device=conv.weight.device,
                )
                with torch.no_grad():
                    part.weight.copy_(conv.weight[starts[i] : starts[i] + sizes[i]])
                    if conv.bias is not None:
                        part.bias.copy_(conv.bias[starts[i] : starts[i] + sizes[i]])
                name = rw.add(part, "part")
                new = graph.call_module(name, (conv_node.args[0],))  # type: ignore[union-attr]
                new.meta = dict(u.meta)
                rw.calls[name] += 1
                if act is not None:
                    new = graph.create_node(src.op, src.target, (new, *src.args[1:]), dict(src.kwargs))
                    new.meta = dict(u.meta)
                parts[i] = new
        for u in users:
            u.replace_all_uses_with(parts[u.args[1] % len(sizes)])
            rw.erase(u)
        rw.erase(node)
        if act is not None:
            rw.erase(src)
        rw.erase(conv_node)  # type: ignore[arg-type]
        count += 1
    return count


def _pass_channel_scale(rw: _Rewriter) -> int:
    """``conv(x * a)`` with a per-image channel vector ``a`` (N x C x 1 x 1) -> conv with weights x ``a``.

    Channel attention (IMDN's and BSRN's CCA) multiplies a full feature map by a C-vector and feeds
    a convolution; scaling the small weight tensor per call instead saves a full-size pass.
    """
    count = 0
    for node in list(rw.graph.nodes):
        if not _is_mul(node) or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        conv = rw.conv(user)
        if conv is None or user.args != (node,) or user.kwargs or conv.groups != 1:
            continue
        out_shape = _shape(node)
        for x, a in (node.args, node.args[::-1]):
            xs, as_ = _shape(x), _shape(a)
            if xs is None or as_ is None or xs != out_shape or len(as_) != 4:
                continue
            if as_[:2] != xs[:2] or as_[2:] != (1, 1):
                continue
            rw.fused(user)
            user.args = (x,)
            user.kwargs = {"in_scale": a}
            rw.erase(node)
            count += 1
            break
    return count


def _pass_fuse_unary(rw: _Rewriter) -> int:
    """``act(conv(x))`` -> one conv with the activation as a oneDNN post-op."""
    count = 0
    for node in list(rw.graph.nodes):
        act = _activation_of(node, rw.modules)
        if act is None or not node.args:
            continue
        src = node.args[0]
        if rw.conv(src) is None or len(src.users) != 1:
            continue
        rw.fused(src, act)
        node.replace_all_uses_with(src)
        rw.erase(node)
        count += 1
    return count


def _pass_fuse_add(rw: _Rewriter) -> int:
    """``conv(x) + y [-> relu]`` -> one conv with a binary-add (and ReLU) post-op.

    Other activations after the sum stay separate (PyTorch's oneDNN binding chains only ReLU after a
    binary post-op) and run in place on the fresh sum.
    """
    count, graph = 0, rw.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if not _is_add(node):
            continue
        for conv_node, other in (node.args, node.args[::-1]):
            if rw.conv(conv_node) is None or len(conv_node.users) != 1 or len(conv_node.args) != 1:
                continue
            if not isinstance(other, fx.Node) or other is conv_node:
                continue
            if _shape(other) is None or not (_shape(other) == _shape(conv_node) == _shape(node)):
                continue
            users = list(node.users)
            act = _activation_of(users[0], rw.modules) if len(users) == 1 else None
            fuse_relu = act is not None and act.attr == "relu" and users[0].args[0] is node
            rw.fused(conv_node, act if fuse_relu else _NO_ACT, "add")  # type: ignore[arg-type]
            conv_node.args = (conv_node.args[0], other)
            node.replace_all_uses_with(conv_node)
            rw.erase(node)
            if fuse_relu:
                users[0].replace_all_uses_with(conv_node)
                rw.erase(users[0])
            elif act is not None:
                _make_inplace(rw, users[0], act)
            if other not in order or conv_node not in order:
                order = {n: i for i, n in enumerate(graph.nodes)}
            if order[other] > order[conv_node]:
                # The conv now reads ``other``; every user of its result came after the add, which came
                # after ``other``, so running the conv right after ``other`` keeps the order valid.
                other.append(conv_node)
                order[conv_node] = order[other]
            count += 1
            break
    return count


def _make_inplace(rw: _Rewriter, node: fx.Node, act: _Act) -> None:
    """Run activation ``node`` in place on its argument (a fresh result no one else reads)."""
    src = node.args[0]
    if not isinstance(src, fx.Node) or len(src.users) != 1:
        return
    with rw.graph.inserting_before(node):
        new = rw.graph.call_function(_inplace_act, (src, act.attr, act.scalars, act.algorithm))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    rw.erase(node)


def _inplace_act(t: torch.Tensor, attr: str, scalars: tuple[float, ...], algorithm: str) -> torch.Tensor:
    return _Act(attr, tuple(scalars), algorithm).apply(t, inplace=True)


def _pass_mul_add(rw: _Rewriter) -> int:
    """``x * a + y`` with the product used only by the sum -> ``torch.addcmul(y, x, a)`` (one pass).

    ``a`` and ``y`` may broadcast (attention vectors, per-channel biases: FDIWN's gate logits
    ``(x - mean) * gain + bias``) as long as ``x`` has the sum's full shape.
    """
    count, graph = 0, rw.graph
    for node in list(graph.nodes):
        if not _is_add(node):
            continue
        out = _shape(node)
        for prod, y in (node.args, node.args[::-1]):
            if not isinstance(prod, fx.Node) or not _is_mul(prod) or len(prod.users) != 1 or prod is y:
                continue
            if not isinstance(y, fx.Node) or out is None or _shape(prod) != out:
                continue
            x, a = prod.args
            if not (isinstance(x, fx.Node) and isinstance(a, fx.Node)):
                continue
            if _shape(x) != out and _shape(a) == out:
                x, a = a, x
            if _shape(x) != out:
                continue  # x must set the result's shape: addcmul writes a new tensor of it
            with graph.inserting_before(node):
                new = graph.call_function(torch.addcmul, (y, x, a))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            rw.erase(node)
            rw.erase(prod)
            count += 1
            break
    return count


def channel_affine(x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` for an N x C x H x W map and per-channel (N or 1) x C x 1 x 1 ``scale``
    (None: 1) and ``shift``, in whichever form is fastest for the map's dtype and layout.

    Example:
        >>> x = torch.rand(1, 2, 3, 3)
        >>> a, b = torch.rand(1, 2, 1, 1), torch.rand(1, 2, 1, 1)
        >>> torch.allclose(channel_affine(x, a, b), x * a + b)
        True
    """
    c = x.shape[1]
    one_set = shift.shape[0] == 1 and (scale is None or scale.shape[0] == 1)
    if (
        x.device.type == "cpu"
        and x.dtype is torch.bfloat16
        and one_set
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        # PyTorch's bf16 broadcast add / addcmul on a channels-last map run about 10x slower than a
        # depthwise 1x1 convolution doing the same (24x180x320: 1.1-1.3 ms against 0.11 ms, AMD EPYC);
        # oneDNN accumulates in fp32 and rounds once, like the elementwise kernels.
        weight = torch.ones(c, 1, 1, 1, dtype=x.dtype) if scale is None else scale.reshape(c, 1, 1, 1)
        return F.conv2d(x, weight.to(x.dtype), shift.reshape(c).to(x.dtype), groups=c)
    if scale is None:
        return x + shift
    if x.is_contiguous():
        return x * scale + shift  # NCHW: two passes beat broadcast addcmul (fp32 0.15 vs 0.55 ms)
    return torch.addcmul(shift, x, scale)


def _per_channel(node: Any, full: tuple[int, ...]) -> bool:
    """Whether ``node`` is an (N or 1) x C x 1 x 1 tensor for a ``full`` N x C x H x W map."""
    shape = _shape(node)
    if shape is None or len(shape) != 4 or len(full) != 4:
        return False
    return shape[1] == full[1] and shape[2:] == (1, 1) and shape[0] in (1, full[0])


def _pass_channel_affine(rw: _Rewriter) -> int:
    """``addcmul(b, x, a)``, ``x + b``, ``x - b`` with per-channel ``a``, ``b`` -> :func:`channel_affine`."""
    count, graph = 0, rw.graph
    for node in list(graph.nodes):
        out = _shape(node)
        if out is None or len(out) != 4:
            continue
        if (
            node.op == "call_function"
            and node.target is torch.addcmul
            and len(node.args) == 3
            and not node.kwargs
        ):
            shift, x, scale = node.args
            if _shape(x) != out and _shape(scale) == out:
                x, scale = scale, x
            if _shape(x) != out or not (_per_channel(scale, out) and _per_channel(shift, out)):
                continue
            args: tuple[Any, ...] = (x, scale, shift)
        elif _is_add(node) or _is_sub(node):
            is_add = _is_add(node)
            x, shift = node.args
            if is_add and _shape(x) != out:
                x, shift = shift, x
            if not isinstance(x, fx.Node) or _shape(x) != out or not _per_channel(shift, out):
                continue
            if not is_add:
                with graph.inserting_before(node):
                    shift = graph.call_function(operator.neg, (shift,))
                shift.meta = dict(node.args[1].meta)  # type: ignore[union-attr]
            args = (x, None, shift)
        else:
            continue
        with graph.inserting_before(node):
            new = graph.call_function(channel_affine, args)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        rw.erase(node)
        count += 1
    return count


def shuffle_channels(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel shuffle (output channel i is input channel ``(i % groups) * (C // groups) + i // groups``)
    that keeps a channels-last map channels-last: one copy, in the layout the convolutions want.

    Example:
        >>> x = torch.arange(6.0).view(1, 6, 1, 1).contiguous(memory_format=torch.channels_last)
        >>> shuffle_channels(x, 2).flatten().tolist()
        [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    """
    b, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        nhwc = x.permute(0, 2, 3, 1).reshape(b, h, w, groups, c // groups).transpose(3, 4)
        return nhwc.reshape(b, h, w, c).permute(0, 3, 1, 2)
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _is_reshape(node: Any) -> bool:
    return isinstance(node, fx.Node) and (
        (node.op == "call_method" and node.target in ("reshape", "view"))
        or (node.op == "call_function" and node.target is torch.reshape)
    )


def _swaps_axes_1_2(node: Any) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if (node.op == "call_method" and node.target == "transpose") or (
        node.op == "call_function" and node.target is torch.transpose
    ):
        return sorted(d % 5 for d in node.args[1:3] if isinstance(d, int)) == [1, 2]
    if node.op == "call_method" and node.target == "permute":
        dims = node.args[1:] if len(node.args) > 2 else node.args[1]
        return list(dims) == [0, 2, 1, 3, 4]
    return False


def _pass_channel_shuffle(rw: _Rewriter) -> int:
    """``x.reshape(b, g, c/g, h, w).transpose(1, 2).reshape(b, c, h, w)`` -> :func:`shuffle_channels`."""
    count = 0
    for node in list(rw.graph.nodes):
        if not _is_reshape(node) or not node.args or not _swaps_axes_1_2(node.args[0]):
            continue
        swap = node.args[0]
        split = swap.args[0]
        if not _is_reshape(split) or len(swap.users) != 1 or len(split.users) != 1:
            continue
        src, mid, out = _shape(split.args[0]), _shape(split), _shape(node)
        if src is None or mid is None or out is None or len(src) != 4 or out != src:
            continue
        if len(mid) != 5 or mid[0] != src[0] or mid[1] * mid[2] != src[1] or mid[3:] != src[2:]:
            continue
        with rw.graph.inserting_before(node):
            new = rw.graph.call_function(shuffle_channels, (split.args[0], int(mid[1])))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        rw.erase(node)
        rw.erase(swap)
        rw.erase(split)
        count += 1
    return count


def _apply_inference_forms(module: nn.Module) -> int:
    """Swap every submodule that offers ``inference_form()`` for that form, in place; how many."""
    count = 0
    for name, child in module.named_children():
        form = getattr(child, "inference_form", None)
        if callable(form):
            setattr(module, name, form())
            count += 1
        else:
            count += _apply_inference_forms(child)
    return count


# The graph rewrites, registered once, in the order they run: each returns how many places it changed.
_PASS_FUNCS: dict[str, Callable[[_Rewriter], int]] = {
    "channel_shuffle": _pass_channel_shuffle,
    "fold_input_scale": _pass_fold_input_scale,
    "fold_output_scale": _pass_fold_output_scale,
    "fold_scalar_mul": _pass_fold_scalar_mul,
    "spatial_stats": _pass_spatial_stats,
    "split_conv": _pass_split_conv,
    "channel_scale": _pass_channel_scale,
    "fuse_unary": _pass_fuse_unary,
    "fuse_add": _pass_fuse_add,
    "mul_add": _pass_mul_add,
    "channel_affine": _pass_channel_affine,
}
# Every rewrite optimize_for_inference can run, in order: the module-level inference forms (before tracing),
# then the graph rewrites.
PASSES = ("inference_forms", *_PASS_FUNCS)


# ------------------------------------------------------------------------------------ the public API
class FastModule(nn.Module):
    """The optimized network: converts the input once, runs the rewritten graph, returns the compute dtype.

    ``forward`` takes an ``N x 3 x H x W`` float tensor in 0..1 (any dtype, device and layout; it is
    converted to the compute dtype, the module's device and channels-last once) and returns
    ``N x 3 x sH x sW`` in 0..1 in the compute dtype. It holds no per-call state. ``report`` counts
    the rewrites each pass made.
    """

    def __init__(
        self,
        body: nn.Module,
        dtype: torch.dtype,
        device: torch.device,
        channels_last: bool,
        report: dict[str, Any],
    ):
        super().__init__()
        self.body = body
        self.dtype = dtype
        self.device = device
        self.channels_last = channels_last
        self.report = dict(report)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)


def _route_plain_convs(rw: _Rewriter, dtype: torch.dtype, device: torch.device, channels_last: bool) -> int:
    """Plain convolutions -> FusedConv2d without post-ops where PyTorch's own CPU kernel is the slow one.
    A run-time kernel choice, not a graph rewrite:

    - fp32 1x1: PyTorch's dispatch sends a single-threaded fp32 1x1 convolution of one image to its THNN
      kernel (``aten::_slow_conv2d_forward``), 4-5x slower than oneDNN's (64 -> 64 channels on a 96 x 96
      channels-last map, one thread: 2.9 ms against 0.5 ms), about 40% of a tiled BSRN run in one-CPU
      processes (Ray tasks, test workers). With more threads PyTorch already picks oneDNN; bf16 always does.
    - fp16, every conv: FusedConv2d's fp32 kernel on the fp16 values (see FusedConv2d.finalize).
    """
    if device.type != "cpu":
        return 0
    onednn_1x1 = dtype == torch.float32 and channels_last and torch.backends.mkldnn.is_available()
    count = 0
    for node in list(rw.graph.nodes):
        conv = rw.conv(node, plain=True)
        if conv is None:
            continue
        pointwise = (
            tuple(conv.kernel_size) == (1, 1)
            and conv.groups == 1
            and tuple(conv.stride) == (1, 1)
            and tuple(conv.padding) == (0, 0)
        )
        if (onednn_1x1 and pointwise) or dtype == torch.float16:
            rw.fused(node)
            count += 1
    return count


def _reshapes_channels(gm: fx.GraphModule) -> bool:
    """Whether the graph reshapes a 4-D feature map so that its channel axis is split or merged."""
    for node in gm.graph.nodes:
        if not _is_reshape(node) or not node.args:
            continue
        src, out = _shape(node.args[0]), _shape(node)
        if src is not None and out is not None and len(src) == 4 and (len(out) != 4 or out[:2] != src[:2]):
            return True
    return False


def _example_input(descriptor: Any, device: torch.device) -> torch.Tensor:
    """A small input obeying the model's size rules, for the one trial run that records shapes."""
    traits = getattr(descriptor, "traits", None)
    min_size = int(getattr(traits, "min_size", 1) or 1)
    multiple = int(getattr(traits, "size_multiple", 1) or 1)
    # Small (the trial run of a deep network costs seconds otherwise) and non-square, so a rewrite that
    # confused height and width would be caught by the shape checks.
    h = -(-max(min_size, 17) // multiple) * multiple
    w = -(-max(min_size, 19) // multiple) * multiple
    return torch.rand(1, 3, h, w, device=device)


def optimize_for_inference(
    module: nn.Module,
    descriptor: Any = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    passes: Iterable[str] | None = None,
    example: torch.Tensor | None = None,
    channels_last: bool | None = None,
) -> FastModule:
    """A faster, equivalent copy of a 0..1-in, 0..1-out network, for ``dtype`` on ``device``.

    ``module`` is not modified (its weights are copied). ``descriptor`` (a ``ModelDescriptor`` or None)
    supplies the input size rules for the one trial run that records tensor shapes. ``passes`` picks
    rewrites from :data:`PASSES` (default: all), to measure what each one buys. ``example`` replaces
    the default trial input (a small N=1, 3-channel image obeying the descriptor's size rules). The returned
    :class:`FastModule` converts its input to ``dtype``/``device``/channels-last itself and returns
    ``dtype``; in fp32 it matches ``module`` to rounding error (about 1e-6 on 0..1 outputs).
    Building takes a second or two (tracing); build once, call many times, from any thread.

    Example:
        >>> import torch
        >>> from lightsr._zoo import describe
        >>> desc = describe("imdn-rtc", 2)
        >>> net = desc.wrap(desc.build_network()).eval()
        >>> fast = optimize_for_inference(net, desc, dtype=torch.float32, device="cpu")
        >>> x = torch.rand(1, 3, 20, 24)
        >>> bool((fast(x) - net(x)).abs().max() < 1e-4)
        True
    """
    device = torch.device(device)
    chosen = tuple(PASSES if passes is None else passes)
    unknown = set(chosen) - set(PASSES)
    if unknown:
        raise ValueError(f"unknown passes {sorted(unknown)}; choose from {PASSES}")
    net = copy.deepcopy(module).to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    report: dict[str, Any] = {}
    if "inference_forms" in chosen:
        report["inference_forms"] = _apply_inference_forms(net)
    try:
        gm = _symbolic_trace(net)
        with torch.no_grad():
            x = _example_input(descriptor, device) if example is None else example.to(device, torch.float32)
            ShapeProp(gm).propagate(x)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: run the plain copy
        logger.info("torch.fx cannot trace %s (%s); using a plain %s copy", type(module).__name__, exc, dtype)
        report["traced"] = False
        cl = device.type != "mps" if channels_last is None else channels_last
        body: nn.Module = copy.deepcopy(net).to(dtype=dtype)
        if cl:
            body = body.to(memory_format=torch.channels_last)
        return FastModule(body, dtype, device, cl, report)
    report["traced"] = True
    rw = _Rewriter(gm)
    for name in PASSES:
        if name in chosen and name != "inference_forms":
            report[name] = _PASS_FUNCS[name](rw)
    if channels_last is None:
        # channels-last is the fast convolution layout on CPU (oneDNN) and CUDA (tensor cores), but a
        # reshape that splits or merges the channel axis (left after the rewrites, e.g. with
        # ``inference_forms`` off: FDIWN's shuffle attention, hundreds of times) cannot be a view of it:
        # each one copies, and the layout flips back and forth. Once the rewrites keep the channels
        # whole, channels-last pays in bf16 too (FDIWN x4: 2.19x plain against 1.78x NCHW).
        channels_last = device.type != "mps" and not _reshapes_channels(gm)
    report["channels_last"] = channels_last
    report["routed_convs"] = _route_plain_convs(rw, dtype, device, channels_last)
    # Other convs left without post-ops stay nn.Conv2d: PyTorch's own dispatch (oneDNN, or im2col + GEMM for
    # small fp32 convs) is as fast or faster for them (FDIWN's 24-channel convs: 1.3x faster in fp32).
    for node in gm.graph.nodes:
        module_ = rw.modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module_, FusedConv2d):
            shape = _shape(node.args[0])
            module_.pointlike = shape is not None and tuple(shape[2:]) == (1, 1)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm = gm.to(dtype=dtype)
    for m in gm.modules():
        if isinstance(m, FusedConv2d):
            m.finalize(dtype, device, channels_last)
    if channels_last:
        gm = gm.to(memory_format=torch.channels_last)
    return FastModule(gm, dtype, device, channels_last, report)
