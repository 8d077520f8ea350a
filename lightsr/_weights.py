"""State dicts in and out: upstream checkpoints (read safely), canonical safetensors files (deterministic)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
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


def read_upstream(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an upstream .pth/.pt checkpoint as a flat {key: tensor} dict, never executing pickled code.

    Wrapper dicts (``params``, ``params_ema``, ``state_dict``...) are unwrapped and the ``module.``
    prefix left by DataParallel is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
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
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} holds no state dict of tensors (top-level type {type(obj).__name__})")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        out[key[len("module.") :] if key.startswith("module.") else key] = value
    return out


def convert_state_dict(upstream: dict[str, torch.Tensor], desc: ModelDescriptor) -> dict[str, torch.Tensor]:
    """Upstream tensors -> the canonical tensors of ``desc``'s network (contiguous float32 CPU copies)."""
    converted = get_family(desc.arch).convert_state_dict(dict(upstream), dict(desc.arch_config))
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sorted(converted.items())}


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


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and lightsr metadata of a converted file (metadata is {} for foreign safetensors files)."""
    try:
        data = Path(path).read_bytes()
        tensors = st_load_bytes(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r} as safetensors: {exc}") from exc
    raw = header.get("__metadata__", {}) or {}
    meta = json.loads(raw[_SAFETENSORS_META_KEY]) if _SAFETENSORS_META_KEY in raw else {}
    return tensors, meta


def load_weights_file(path: str | os.PathLike[str], desc: ModelDescriptor) -> dict[str, torch.Tensor]:
    """Canonical tensors for ``desc`` from a converted .safetensors file or an upstream checkpoint."""
    path = Path(path)
    if not path.is_file():
        from lightsr.errors import WeightsNotFoundError

        raise WeightsNotFoundError(f"weights file {str(path)!r} does not exist; check the path given as weights=")
    if is_safetensors(path):
        tensors, meta = read_safetensors(path)
        if meta and (meta.get("model"), meta.get("scale")) != (desc.name, desc.scale):
            raise CheckpointError(
                f"{str(path)!r} holds weights for {meta.get('model')!r} x{meta.get('scale')}, "
                f"not {desc.name!r} x{desc.scale}; pass the matching name and scale"
            )
        return tensors
    return convert_state_dict(read_upstream(path), desc)


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


def convert_file(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], desc: ModelDescriptor
) -> str:
    """Convert an upstream checkpoint to the canonical safetensors file; returns its sha256."""
    tensors = convert_state_dict(read_upstream(src), desc)
    net = desc.build_network()
    try:
        load_into(net, tensors, source=str(src))
    except RuntimeError as exc:
        raise CheckpointError(f"{str(src)!r} does not fit {desc.name} x{desc.scale}: {exc}") from exc
    data = to_safetensors_bytes(tensors, canonical_metadata(desc))
    atomic_write_bytes(data, dst)
    return hashlib.sha256(data).hexdigest()


def identify_checkpoint(path: str | os.PathLike[str], scale: int | None = None) -> ModelDescriptor:
    """Which supported (model, scale) a weights file holds, from its contents alone.

    In order: lightsr's own safetensors header; the file's sha256 against every official upstream
    checkpoint in the manifest; then each architecture family's ``match_state_dict`` on the keys and
    shapes (wrapper keys and ``module.`` prefixes removed), kept only if the configuration it finds is one
    lightsr ships (the value range a network was trained on cannot be read from its weights).
    ``scale`` settles files that hold several scales (CARN-M) or whose scale the shapes cannot tell
    (PAN x2 and x3 are shaped alike).
    """
    from lightsr._zoo import ModelDescriptor as _Desc
    from lightsr._zoo import records
    from lightsr.archs import FAMILIES
    from lightsr.errors import WeightsNotFoundError

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {str(path)!r} does not exist")

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
        _, meta = read_safetensors(path)
        if meta.get("model"):
            from lightsr._zoo import find_record

            return _Desc.from_record(find_record(meta["model"], int(meta["scale"])))
        state = read_safetensors(path)[0]
    else:
        digest = sha256_file(path)
        exact = [r for r in records() if r["upstream"]["sha256"] == digest]
        if exact:
            return pick(exact, "identified by its sha256")
        state = read_upstream(path)

    recognised: list[str] = []
    for arch in FAMILIES:
        family = get_family(arch)
        config = family.match_state_dict(state)
        if config is None:
            continue
        recognised.append(f"{arch} {config}")
        same_shape = {k: v for k, v in config.items() if k not in ("scale", "upscale")}
        candidates = [
            r for r in records()
            if r["arch"] == arch and r["arch_config"]
            and {k: v for k, v in r["arch_config"].items() if k not in ("scale", "upscale")} == same_shape
            and (scale is not None or r["arch_config"].get("scale", r["arch_config"].get("upscale"))
                 == config.get("scale", config.get("upscale")))
        ]
        if candidates:
            return pick(candidates, f"recognised as {arch} from its keys and shapes")
    if recognised:
        raise CheckpointError(
            f"{str(path)!r} looks like {'; '.join(recognised)}, but no model lightsr ships has that "
            "configuration; load it with a model name only if it is one of `lightsr models`"
        )
    raise CheckpointError(
        f"{str(path)!r} is none of the architectures lightsr supports ({', '.join(FAMILIES)}); "
        "pass a model name and check that the file is an SR checkpoint"
    )
