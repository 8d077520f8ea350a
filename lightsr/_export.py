"""lightsr.export: a model as a verified ONNX file or OpenVINO IR for deployment without lightsr.

The graph is the plain fp32 ``Upscaler.module`` (0..1 in, 0..1 out, range conversion inside), built by
``lightsr._backends.onnx_model``; this module only resolves the model, checks the options and writes the
file atomically (a temporary name in the destination folder, then a rename: never a partial file).
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from lightsr import _backends
from lightsr._engine import Upscaler, load_model
from lightsr._weights import check_output_path, sha256_file
from lightsr.errors import InputError, OutputError

FORMATS = ("onnx", "openvino")


def export(
    name_or_upscaler: str | Upscaler,
    path: str | os.PathLike[str],
    *,
    format: str = "onnx",
    scale: int | None = None,
    precision: str = "fp32",
    dynamic: bool = True,
    weights: str | os.PathLike[str] | None = None,
    input_size: tuple[int, int] | None = None,
) -> Path:
    """Export a model's network to an ONNX file (``format='onnx'``) or an OpenVINO IR (``'openvino'``).

    ``name_or_upscaler`` is a model name (with ``scale``, default 4, and optionally ``weights``, a file
    as for :func:`load_model`) or a loaded :class:`Upscaler`. The graph takes ``N x 3 x H x W`` float32
    RGB in 0..1 and returns ``N x 3 x sH x sW`` in 0..1 (not clamped: clamp before quantising); with
    ``dynamic=True`` (default) N, H and W are free, else fixed at one image of ``input_size`` (LR
    height, width; default 64 x 64). Inputs must respect the model's minimum size and size multiple,
    which are stored with the model name, scale, input range, weights license and the manifest sha256 of
    the weights in the ONNX ``metadata_props`` (keys ``lightsr.*``; the OpenVINO IR's rt_info gets the
    same under ``lightsr``). ``precision``: only ``'fp32'`` (engines choose their own compute precision).
    The OpenVINO IR is ``path`` (``.xml``) plus its ``.bin`` next to it. Returns ``path``.

    Needs ``pip install "lightsr[onnxruntime]"`` (ONNX) or ``"lightsr[openvino]"`` (IR); an unknown
    format or precision raises :class:`~lightsr.errors.InputError`, a path that cannot be written
    :class:`~lightsr.errors.OutputError` (nothing is written).

    Example:
        >>> import lightsr, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "imdn-rtc_x2.onnx")
        >>> lightsr.export("imdn-rtc", out, scale=2, weights="../shared/weights/IMDN_x2_RTC.pth").name
        'imdn-rtc_x2.onnx'
    """
    if format not in FORMATS:
        raise InputError(f"unknown export format {format!r}; use 'onnx' or 'openvino'")
    if precision != "fp32":
        raise InputError(
            f"export precision {precision!r} is not supported; use 'fp32' (ONNX Runtime and OpenVINO pick "
            "their compute precision at load time, e.g. OpenVINO's INFERENCE_PRECISION_HINT)"
        )
    if input_size is not None and (
        len(input_size) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in input_size)
    ):
        raise InputError(f"input_size must be (height, width) in LR pixels, got {input_size!r}")
    dst = check_output_path(path)
    if format == "openvino" and dst.suffix != ".xml":
        raise OutputError(
            f"an OpenVINO IR is an .xml file (plus its .bin); got {str(dst)!r}, e.g. use "
            f"{str(dst.with_suffix('.xml'))!r}"
        )
    # Check the engine packages before the (slow) load and export.
    _backends.require("onnx", "ONNX export")
    if format == "openvino":
        _backends.require("openvino", "OpenVINO export")
    if isinstance(name_or_upscaler, Upscaler):
        if weights is not None or scale not in (None, name_or_upscaler.scale):
            raise InputError("scale and weights belong to load_model; an Upscaler already has them")
        up = name_or_upscaler
    elif isinstance(name_or_upscaler, str):
        up = load_model(name_or_upscaler, scale, weights=weights, device="cpu", precision="fp32")
    else:
        raise InputError(f"export takes a model name or an Upscaler, got {type(name_or_upscaler).__name__}")
    file_sha = sha256_file(weights) if weights is not None else None
    model = _backends.onnx_model(
        # A copy off the GPU: .cpu() would move the module the Upscaler itself runs.
        copy.deepcopy(up.module).cpu() if up.device.type != "cpu" else up.module,
        up.descriptor,
        dynamic=dynamic,
        input_size=input_size,
        weights_sha256=file_sha,
    )
    if format == "onnx":
        _write_atomically(dst, lambda tmp: _save_onnx(model, tmp))
    else:
        meta = {p.key: p.value for p in model.metadata_props}
        _write_atomically(dst, lambda tmp: _save_openvino(model.SerializeToString(), meta, tmp))
    return dst


def _save_onnx(model: object, tmp: Path) -> list[Path]:
    tmp.write_bytes(model.SerializeToString())  # type: ignore[attr-defined]
    return [tmp]


def _save_openvino(model_bytes: bytes, meta: dict[str, str], tmp: Path) -> list[Path]:
    ov = _backends.require("openvino", "OpenVINO export")
    ir = ov.Core().read_model(model=model_bytes, weights=b"")
    for key, value in meta.items():
        ir.set_rt_info(value, ["lightsr", key.removeprefix("lightsr.")])
    # fp32 weights: the IR is a faithful copy of the ONNX graph (OpenVINO would store fp16 by default).
    ov.save_model(ir, str(tmp), compress_to_fp16=False)
    return [tmp, tmp.with_suffix(".bin")]


def _write_atomically(dst: Path, save: Callable[[Path], list[Path]]) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=dst.suffix, dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    written: list[Path] = [tmp]
    try:
        written = save(tmp)
        for part in written:
            os.replace(part, dst.with_suffix(part.suffix))
    except OSError as exc:
        raise OutputError(
            f"cannot write {str(dst)!r} ({exc.strerror or exc}); choose another output path"
        ) from exc
    finally:
        for part in (tmp, *written, tmp.with_suffix(".bin")):
            if part.exists():
                part.unlink()
