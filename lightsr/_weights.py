"""State dicts in and out: upstream checkpoints (read safely), canonical safetensors files (deterministic)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save as st_save_bytes

from lightsr._zoo import ModelDescriptor
from lightsr.archs import get_family
from lightsr.errors import CheckpointError

FORMAT_VERSION = 1
# Wrapper keys under which upstream training frameworks store the state dict (BasicSR, EDSR, KAIR...).
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator")
_SAFETENSORS_META_KEY = "lightsr"


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """Sniff the file: safetensors starts with an 8-byte header length followed by '{'."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


# ------------------------------------------------------------------------------------------ size bounds
# Every official checkpoint is under 4 MB. A file whose tensors would take far more than the largest of
# them is no SR checkpoint lightsr ships, and refusing it before reading keeps a 1 MB zip that inflates to
# 1 GiB (or a 1 GiB safetensors file) from costing a gigabyte of memory. 16x covers training wrappers that
# keep several copies (params + params_ema) and float64 saves; the floor keeps the bound generous.
_BOUND_FACTOR = 16
_BOUND_FLOOR = 64 << 20


@lru_cache(maxsize=1)
def max_checkpoint_bytes() -> int:
    """The most bytes lightsr reads from one weights file (or holds of its tensors), from the manifest."""
    from lightsr._zoo import records

    largest = max(
        max(int(r["upstream"].get("size") or 0), int(r["file"].get("size") or 0)) for r in records()
    )
    return max(_BOUND_FLOOR, _BOUND_FACTOR * largest)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _too_big(path: Path, what: str, size: int) -> CheckpointError:
    return CheckpointError(
        f"refusing to read {str(path)!r}: {what} {_mib(size)}, more than the {_mib(max_checkpoint_bytes())} "
        "any supported model needs (the largest official checkpoint is under 4 MB); it is not a "
        "checkpoint of a model lightsr ships, or it is damaged"
    )


def _check_container_size(path: Path) -> None:
    """Bound what ``torch.load`` will inflate, before it runs: zip entries' declared sizes, else the file."""
    limit = max_checkpoint_bytes()
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                total = sum(info.file_size for info in zf.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot read {str(path)!r} as a PyTorch checkpoint (a damaged zip: {exc})"
            ) from exc
        if total > limit:
            raise _too_big(path, "its zip entries inflate to", total)
    else:
        # The legacy (pre-1.6) pickle format is stored uncompressed: its size on disk bounds its tensors.
        size = path.stat().st_size
        if size > limit:
            raise _too_big(path, "it is", size)


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ST_FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def _check_tensor_kinds(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse tensors that cannot be real weights: sparse, on the meta device, not float, or too many."""
    total = 0
    for key, t in state.items():
        if t.layout != torch.strided:
            raise CheckpointError(
                f"{source}: tensor {key!r} is a {str(t.layout).replace('torch.', '')} tensor; "
                "SR weights are dense: re-save the checkpoint with dense tensors (tensor.to_dense())"
            )
        if t.is_meta:
            raise CheckpointError(
                f"{source}: tensor {key!r} is on the meta device, so it holds no values; the checkpoint was "
                "saved from a model that was never initialised: save it again from the trained model"
            )
        total += t.numel() * t.element_size()
        if total > max_checkpoint_bytes():
            # Checked on shapes, before anything is copied: a stride-0 view saved as a huge tensor is cheap
            # to load but would take gigabytes once made contiguous.
            raise _too_big(Path(source), "its tensors take", total)
    for key, t in state.items():
        if t.dtype not in _FLOAT_DTYPES and not key.endswith("num_batches_tracked"):
            raise CheckpointError(
                f"{source}: tensor {key!r} is {str(t.dtype).replace('torch.', '')}, not floating point; "
                "SR weights are float32/float16/bfloat16 (a quantised or corrupted checkpoint cannot be "
                "loaded as is: give the float checkpoint)"
            )


def _check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"{source}: tensor {key!r} has {bad} NaN/inf value(s) of {t.numel()}; the checkpoint is "
                "damaged or from a diverged training run: use another checkpoint"
            )


def read_upstream(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an upstream .pth/.pt checkpoint as a flat {key: tensor} dict, never executing pickled code.

    Wrapper dicts (``params``, ``params_ema``, ``state_dict``...) are unwrapped and the ``module.``
    prefix left by DataParallel is removed. Files (or zip entries) larger than any supported model needs
    are refused before they are inflated, as are sparse, meta-device and non-float tensors.
    """
    path = Path(path)
    _check_is_file(path)
    _check_container_size(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"cannot read {str(path)!r} as a PyTorch checkpoint ({type(exc).__name__}: {exc}); "
            "give a .pth/.pt state dict or a .safetensors file"
        ) from exc
    except Exception as exc:  # pickle.UnpicklingError for files with code objects, etc.
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it is not a plain tensor checkpoint "
            f"({type(exc).__name__}). lightsr only reads checkpoints with weights_only=True."
        ) from exc
    state = unwrap_state_dict(obj, source=str(path))
    _check_tensor_kinds(state, str(path))
    return state


def _check_is_file(path: Path) -> None:
    from lightsr.errors import WeightsNotFoundError

    if path.is_dir():
        inside = sorted(
            p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".pt") and p.is_file()
        )[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise WeightsNotFoundError(
            f"weights path {str(path)!r} is a folder{hint}; pass one weights file: a converted "
            ".safetensors file or an upstream .pth/.pt checkpoint"
        )
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights file {str(path)!r} does not exist; check the path given as weights="
        )


def unwrap_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{source} holds no state dict of tensors (top-level type {type(obj).__name__})"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        out[key.removeprefix("module.")] = value
    return out


def convert_state_dict(upstream: dict[str, torch.Tensor], desc: ModelDescriptor) -> dict[str, torch.Tensor]:
    """Upstream tensors -> the canonical tensors of ``desc``'s network (contiguous float32 CPU copies)."""
    converted = _family_convert(upstream, desc)
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sorted(converted.items())}


def _family_convert(upstream: dict[str, torch.Tensor], desc: ModelDescriptor) -> dict[str, torch.Tensor]:
    try:
        return get_family(desc.arch).convert_state_dict(dict(upstream), dict(desc.arch_config))
    except CheckpointError:
        raise  # the family's own account of what is wrong
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError, AttributeError) as exc:
        # A family converter meets keys of another architecture: say so in one line, not its traceback.
        raise CheckpointError(
            f"its tensors cannot be converted to {desc.name} x{desc.scale} ({type(exc).__name__}: {exc})"
        ) from exc


def canonical_metadata(desc: ModelDescriptor) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model": desc.name,
        "scale": desc.scale,
        "arch": desc.arch,
        "arch_config": desc.arch_config,
        "input_range": desc.input_range,
        "source_sha256": desc.record["upstream"]["sha256"],
    }


def to_safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> bytes:
    # safetensors serialises a multi-key __metadata__ in hash-map order, which changes from one process to
    # the next (measured); one key holding sorted JSON keeps the file byte-for-byte deterministic.
    meta = {_SAFETENSORS_META_KEY: json.dumps(metadata, sort_keys=True, separators=(",", ":"))}
    return st_save_bytes(tensors, metadata=meta)


def atomic_write_bytes(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write to a temporary file beside ``path`` and rename it into place (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _parse_lightsr_metadata(raw: dict[str, str] | None, path: Path) -> dict[str, Any]:
    """lightsr's header entry, validated: {} for foreign files; a CheckpointError naming the file if
    malformed."""
    if not raw or _SAFETENSORS_META_KEY not in raw:
        return {}
    what = f"{str(path)!r} has a malformed lightsr header"
    fix = "convert the upstream checkpoint again with `lightsr convert`"
    try:
        meta = json.loads(raw[_SAFETENSORS_META_KEY])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{what} (not JSON: {exc}); {fix}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{what} (a JSON {type(meta).__name__}, not an object); {fix}")
    model, scale = meta.get("model"), meta.get("scale")
    if model is not None and not isinstance(model, str):
        raise CheckpointError(f"{what} (model {model!r} is not a name); {fix}")
    if model is not None and (isinstance(scale, bool) or not isinstance(scale, int)):
        raise CheckpointError(f"{what} (scale {scale!r} is not an integer); {fix}")
    version = meta.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has lightsr format version {version!r}; "
            f"this lightsr reads up to {FORMAT_VERSION}: "
            "upgrade lightsr, or convert the upstream checkpoint again with this version"
        )
    return meta


def read_safetensors_header(
    path: str | os.PathLike[str],
) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, Any]]:
    """``({key: (dtype, shape)}, lightsr metadata)`` of a safetensors file, without reading any tensor."""
    from safetensors import safe_open

    path = Path(path)
    _check_is_file(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata()
            layout = {}
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict: it has no __iter__
                view = fh.get_slice(key)
                layout[key] = (str(view.get_dtype()), tuple(int(n) for n in view.get_shape()))
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r} as safetensors: {exc}") from exc
    return layout, _parse_lightsr_metadata(raw, path)


def _safetensors_nbytes(layout: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    total = 0
    for dtype, shape in layout.values():
        n = _ST_FLOAT_DTYPES.get(dtype, 8)
        for d in shape:
            n *= d
        total += n
    return total


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and lightsr metadata of a converted file (metadata is {} for foreign safetensors files).

    The file is memory-mapped, never read whole; its header is checked first (size bound, float dtypes).
    """
    from safetensors import safe_open

    path = Path(path)
    layout, meta = read_safetensors_header(path)
    _check_safetensors_layout(path, layout)
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {key: fh.get_tensor(key) for key in layout}
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r} as safetensors: {exc}") from exc
    return tensors, meta


def _check_safetensors_layout(path: Path, layout: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    total = _safetensors_nbytes(layout)
    if total > max_checkpoint_bytes():
        raise _too_big(path, "its tensors take", total)
    for key, (dtype, _) in layout.items():
        if dtype not in _ST_FLOAT_DTYPES:
            raise CheckpointError(
                f"{path!s}: tensor {key!r} is {dtype}, not floating point; SR weights are F32/F16/BF16 "
                "(a quantised or corrupted file cannot be loaded as is: give the float weights)"
            )


# ------------------------------------------------------------------------------------------ checked loading
def expected_shapes(desc: ModelDescriptor) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``desc``'s network (cached per model, scale and variant)."""
    return dict(_expected_shapes(desc.name, desc.scale, desc.record.get("variant")))


@lru_cache(maxsize=64)
def _expected_shapes(name: str, scale: int, variant: str | None) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from lightsr._zoo import describe

    desc = describe(name, scale, variant)
    # A CPU build (a few ms for these networks) is faster than the meta device's first use in a process.
    with torch.no_grad():
        net = desc.build_network()
    return tuple((k, tuple(v.shape)) for k, v in net.state_dict().items())


def _fit_problems(shapes: dict[str, tuple[int, ...]], desc: ModelDescriptor) -> str:
    """'' if ``shapes`` are exactly ``desc``'s network's, else a short account of the difference."""
    expected = expected_shapes(desc)
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [k for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} missing key(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
        )
    if unexpected:
        parts.append(
            f"{len(unexpected)} unexpected key(s) "
            f"({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
        )
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} tensor(s) of the wrong shape ({k} is {list(shapes[k])}, not {list(expected[k])}"
            f"{', ...' if len(wrong) > 1 else ''})"
        )
    return "; ".join(parts)


def _call(desc_or_record: Any) -> str:
    name = desc_or_record.name if hasattr(desc_or_record, "name") else desc_or_record["model"]
    scale = desc_or_record.scale if hasattr(desc_or_record, "scale") else desc_or_record["scale"]
    return f"model={name!r}, scale={scale}"


def _wrong_model_error(path: Path | None, desc: ModelDescriptor, problem: str) -> CheckpointError:
    """One line: what the file is (when lightsr recognises it) and what to pass instead."""
    where = repr(str(path)) if path is not None else "the checkpoint"
    if path is not None:
        try:
            other = identify_checkpoint(path)
        except (CheckpointError, OSError):
            other = None
        if other is not None and (other.name, other.scale) != (desc.name, desc.scale):
            return CheckpointError(
                f"{where} is {other.name} x{other.scale} (recognised from its keys and shapes), not "
                f"{desc.name} x{desc.scale}; pass {_call(other)}"
            )
    return CheckpointError(
        f"{where} does not fit {desc.name} x{desc.scale}: {problem}. Check the model name and scale "
        "(`lightsr models` lists them), or load it without a name to have it recognised"
    )


def _official_matches(digest: str) -> list[dict[str, Any]]:
    from lightsr._zoo import records

    return [r for r in records() if digest in (r["upstream"].get("sha256"), r["file"].get("sha256"))]


def _lookalikes(shapes: dict[str, tuple[int, ...]], desc: ModelDescriptor) -> list[dict[str, Any]]:
    """Other records of the same architecture whose networks take exactly these tensors (PAN x2 and x3)."""
    from lightsr._zoo import records

    return [
        r
        for r in records()
        if r["arch"] == desc.arch
        and (r["model"], r["scale"]) != (desc.name, desc.scale)
        and r.get("default")
        and not _fit_problems(shapes, ModelDescriptor.from_record(r))
    ]


def _check_identity(path: Path, desc: ModelDescriptor) -> list[dict[str, Any]]:
    """Refuse another model's official file; return the records its sha256 matches (may be [])."""
    matches = _official_matches(sha256_file(path))
    if matches and not any((r["model"], r["scale"]) == (desc.name, desc.scale) for r in matches):
        names = ", ".join(f"{r['model']} x{r['scale']}" for r in matches)
        raise CheckpointError(
            f"{str(path)!r} is the official {names} checkpoint ({matches[0]['upstream']['filename']}, "
            f"identified by its sha256), not {desc.name} x{desc.scale}; pass {_call(matches[0])} "
            f"(or give a {desc.name} x{desc.scale} file)"
        )
    return matches


def _warn_unverifiable(path: Path, desc: ModelDescriptor, shapes: dict[str, tuple[int, ...]]) -> None:
    others = _lookalikes(shapes, desc)
    if others:
        names = " and ".join(f"{r['model']} x{r['scale']}" for r in others)
        warnings.warn(
            f"{str(path)!r} is not the official {desc.name} x{desc.scale} checkpoint "
            f"({desc.record['upstream']['filename']}, "
            f"sha256 {desc.record['upstream']['sha256'][:12]}...), and "
            f"its tensors are shaped exactly like {names}'s, so lightsr cannot check that it holds "
            f"{desc.name} x{desc.scale} weights; if it does not, the results will be wrong",
            UserWarning,
            stacklevel=3,
        )


def load_checked(path: str | os.PathLike[str], desc: ModelDescriptor) -> dict[str, torch.Tensor]:
    """Canonical float32 tensors for ``desc`` from ``path``, with every check before they are used.

    ``path`` is a converted ``.safetensors`` file or an upstream checkpoint (converted in memory). Sizes
    are bounded before anything is inflated or read; safetensors files are memory-mapped; keys and shapes
    must be exactly those of ``desc``'s network (else one line naming what the file is, when lightsr
    recognises it); sparse, meta, non-float and non-finite tensors are refused; another model's official
    file (by sha256) is refused, and a file whose scale its shapes cannot tell (PAN x2/x3) and that is not
    the pinned one draws a ``UserWarning``. Raises :class:`~lightsr.errors.CheckpointError`.
    """
    path = Path(path)
    _check_is_file(path)
    if is_safetensors(path):
        layout, meta = read_safetensors_header(path)
        made_by_lightsr = meta.get("model") is not None
        if made_by_lightsr and (meta["model"], meta.get("scale")) != (desc.name, desc.scale):
            raise CheckpointError(
                f"{str(path)!r} holds weights for {meta.get('model')!r} x{meta.get('scale')}, "
                f"not {desc.name!r} x{desc.scale}; "
                f"pass model={meta.get('model')!r}, scale={meta.get('scale')}"
            )
        _check_safetensors_layout(path, layout)
        official = [] if made_by_lightsr else _check_identity(path, desc)
        shapes = {k: shape for k, (_, shape) in layout.items()}
        problem = _fit_problems(shapes, desc)
        if problem:
            raise _wrong_model_error(path, desc, problem)
        tensors, _ = read_safetensors(path)
    else:
        _check_container_size(path)  # before hashing or reading a byte of a file no model could need
        official = _check_identity(path, desc)
        upstream = read_upstream(path)
        try:
            converted = _family_convert(upstream, desc)
        except CheckpointError as exc:
            raise _wrong_model_error(path, desc, str(exc).rstrip(".")) from exc
        shapes = {k: tuple(v.shape) for k, v in converted.items()}
        problem = _fit_problems(shapes, desc)
        if problem:
            raise _wrong_model_error(path, desc, problem)
        made_by_lightsr = False
        tensors = converted
    _check_tensor_kinds(tensors, str(path))
    # clone(): tensors from a memory-mapped file must not keep the file mapped (or change with it).
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sorted(tensors.items())
    }
    # After the cast: a float64 value beyond float32's range becomes inf here.
    _check_finite(tensors, str(path))
    if not made_by_lightsr and not official:
        _warn_unverifiable(path, desc, shapes)
    return tensors


def load_weights_file(path: str | os.PathLike[str], desc: ModelDescriptor) -> dict[str, torch.Tensor]:
    """Canonical tensors for ``desc`` from a converted .safetensors file or an upstream checkpoint."""
    return load_checked(path, desc)


def load_into(net: torch.nn.Module, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Strict load with an error that names the missing and unexpected keys."""
    result = net.load_state_dict(tensors, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit this architecture: {len(missing)} missing key(s) "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected key(s) "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. Is it the right model and scale?"
        )
    # load_state_dict(strict=False) still raises on shape mismatch, which is a CheckpointError too.


def check_output_path(dst: str | os.PathLike[str]) -> Path:
    """``dst`` as a Path if a file can be written there, else an OutputError saying what to pass."""
    from lightsr.errors import OutputError

    dst = Path(dst)
    if dst.is_dir():
        raise OutputError(
            f"output {str(dst)!r} is a folder; give a file name, e.g. {str(dst / 'model.safetensors')!r}"
        )
    parent = dst.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write {str(dst)!r}: {str(parent)!r} is a file, not a folder")
    if not parent.exists():
        raise OutputError(
            f"cannot write {str(dst)!r}: the folder {str(parent)!r} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {str(dst)!r}: the folder {str(parent)!r} is not writable")
    return dst


def convert_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], desc: ModelDescriptor) -> str:
    """Convert an upstream checkpoint to the canonical safetensors file; returns its sha256.

    Raises :class:`~lightsr.errors.OutputError` (and writes nothing) if ``dst`` cannot be written.
    """
    from lightsr.errors import OutputError

    dst = check_output_path(dst)
    tensors = load_checked(src, desc)
    data = to_safetensors_bytes(tensors, canonical_metadata(desc))
    try:
        atomic_write_bytes(data, dst)
    except OSError as exc:  # disk full, permissions, a name the file system refuses...
        raise OutputError(
            f"cannot write {str(dst)!r} ({exc.strerror or exc}); choose another output path"
        ) from exc
    return hashlib.sha256(data).hexdigest()


def identify_checkpoint(path: str | os.PathLike[str], scale: int | None = None) -> ModelDescriptor:
    """Which supported (model, scale) a weights file holds, from its contents alone.

    In order: lightsr's own safetensors header; the file's sha256 against every official upstream
    checkpoint in the manifest; then each architecture family's ``match_state_dict`` on the keys and
    shapes (wrapper keys and ``module.`` prefixes removed), kept only if the configuration it finds is one
    lightsr ships (the value range a network was trained on cannot be read from its weights).
    ``scale`` settles files that hold several scales (CARN-M) or whose scale the shapes cannot tell
    (PAN x2 and x3 are shaped alike: without ``scale`` such a file raises ``CheckpointError``).
    """
    from lightsr._zoo import ModelDescriptor as _Desc
    from lightsr._zoo import find_record, records
    from lightsr.archs import FAMILIES

    path = Path(path)
    _check_is_file(path)

    def pick(candidates: list[dict[str, Any]], how: str) -> ModelDescriptor:
        if scale is not None:
            chosen = [r for r in candidates if r["scale"] == scale]
            if not chosen:
                found = ", ".join(f"{r['model']} x{r['scale']}" for r in candidates)
                raise CheckpointError(f"{str(path)!r} is {found} ({how}), not x{scale}; pass the right scale")
        else:
            chosen = sorted(candidates, key=lambda r: (not r.get("default"), -r["scale"]))
        return _Desc.from_record(chosen[0])

    if is_safetensors(path):
        layout, meta = read_safetensors_header(path)
        if meta.get("model"):
            try:
                return _Desc.from_record(find_record(meta["model"], int(meta["scale"])))
            except (LookupError, ValueError) as exc:  # a model or scale this lightsr does not ship
                raise CheckpointError(
                    f"{str(path)!r} was made for {meta['model']} x{meta['scale']}: {exc}"
                ) from exc
        _check_safetensors_layout(path, layout)  # bounded before it is even hashed
        exact = _official_matches(sha256_file(path))
        if exact:
            return pick(exact, "identified by its sha256")
        state = read_safetensors(path)[0]
    else:
        _check_container_size(path)
        digest = sha256_file(path)
        exact = [r for r in records() if r["upstream"]["sha256"] == digest]
        if exact:
            return pick(exact, "identified by its sha256")
        state = read_upstream(path)

    recognised: list[str] = []
    for arch in FAMILIES:
        family = get_family(arch)
        try:
            config = family.match_state_dict(state)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError):
            config = None  # keys of this family but tensors it cannot read: not this family
        if config is None:
            continue
        recognised.append(f"{arch} {config}")
        same_shape = {k: v for k, v in config.items() if k not in ("scale", "upscale")}
        candidates = [
            r
            for r in records()
            if r["arch"] == arch
            and r["arch_config"]
            and {k: v for k, v in r["arch_config"].items() if k not in ("scale", "upscale")} == same_shape
            and (
                scale is not None
                or r["arch_config"].get("scale", r["arch_config"].get("upscale"))
                == config.get("scale", config.get("upscale"))
            )
        ]
        if candidates:
            desc = pick(candidates, f"recognised as {arch} from its keys and shapes")
            if scale is None:
                _refuse_ambiguous_scale(path, desc, state)
            return desc
    if recognised:
        raise CheckpointError(
            f"{str(path)!r} looks like {'; '.join(recognised)}, but no model lightsr ships has that "
            "configuration; load it with a model name only if it is one of `lightsr models`"
        )
    raise CheckpointError(
        f"{str(path)!r} is none of the architectures lightsr supports ({', '.join(FAMILIES)}); "
        "pass a model name and check that the file is an SR checkpoint"
    )


def _refuse_ambiguous_scale(path: Path, desc: ModelDescriptor, state: dict[str, torch.Tensor]) -> None:
    """A file whose tensors fit several scales of one model (PAN x2/x3) cannot be told apart: ask."""
    try:
        shapes = {k: tuple(v.shape) for k, v in _family_convert(state, desc).items()}
    except CheckpointError:
        return
    scales = sorted({desc.scale} | {r["scale"] for r in _lookalikes(shapes, desc) if r["model"] == desc.name})
    if len(scales) > 1:
        listed = " or ".join(f"scale={s}" for s in scales)
        raise CheckpointError(
            f"{str(path)!r} is {desc.name} (recognised from its keys and shapes), but its "
            f"{' and '.join(f'x{s}' for s in scales)} weights are shaped alike, so the scale cannot be told "
            f"from the file; pass {listed}"
        )
