"""Public functions beyond load_model/upscale: conversion (and, as issues land, listing and downloads)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightsr import _hub, _zoo
from lightsr._weights import convert_file
from lightsr._zoo import describe
from lightsr.errors import UnknownModelError


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    model: str,
    scale: int,
    variant: str | None = None,
) -> str:
    """Convert an upstream checkpoint (.pth/.pt) into lightsr's canonical ``.safetensors`` file.

    Keys are renamed to lightsr's modules, weight-norm is folded, and the header carries the model,
    scale and format version. The output is byte-for-byte deterministic; returns its sha256.
    The source is read with ``torch.load(weights_only=True)``: no pickled code is ever run. A file that is
    another model (by its sha256, or its keys and shapes) raises ``CheckpointError`` naming what it is; a
    destination that cannot be written (a folder, a missing folder) raises ``OutputError`` and nothing is
    written.

    Example:
        >>> import lightsr, tempfile, os
        >>> dst = os.path.join(tempfile.mkdtemp(), "rfdn_x4.safetensors")
        >>> len(lightsr.convert_checkpoint("../shared/weights/RFDN_AIM_x4.pth", dst, model="rfdn", scale=4))
        64
    """
    return convert_file(src, dst, describe(model, scale, variant))


@dataclass(frozen=True)
class ModelInfo:
    """One downloadable network: a (model, scale, variant) manifest record, as ``lightsr models`` shows it.

    ``paper_psnr`` and ``reproduced_psnr`` are Set5 Y-PSNR in dB (None where unknown); ``license`` is the
    weights' license (None: upstream states none, so lightsr never re-hosts them). ``hosted_on_hub`` says
    whether the weights are published on the Hugging Face Hub (a pinned revision in the manifest): where it is
    False, which today is every model, they are downloaded from the authors' repository at a pinned commit
    and converted locally, whatever their license. ``cached`` says whether the weights are in a local cache,
    so loading them needs no network.

    Example:
        >>> import lightsr
        >>> info = next(m for m in lightsr.list_models() if m.name == "rfdn")
        >>> info.scale, info.license
        (4, 'MIT')
    """

    name: str
    scale: int
    variant: str
    default: bool
    title: str
    params: int | None
    paper_psnr: float | None
    reproduced_psnr: float | None
    license: str | None
    hosted_on_hub: bool
    cached: bool


def _set5_psnr(metrics: Any) -> float | None:
    if isinstance(metrics, dict):
        set5 = metrics.get("Set5")
        if isinstance(set5, dict) and isinstance(set5.get("psnr_y"), (int, float)):
            return float(set5["psnr_y"])
    return None


def list_models() -> list[ModelInfo]:
    """Every model lightsr can load, one entry per scale (and variant), with whether its weights are cached.

    Example:
        >>> import lightsr
        >>> [m.scale for m in lightsr.list_models() if m.name == "fdiwn"]
        [2, 3, 4]
    """
    models = _zoo.load_manifest()["models"]
    out = []
    for rec in _zoo.records():
        metrics = rec.get("metrics") or {}
        out.append(
            ModelInfo(
                name=rec["model"],
                scale=int(rec["scale"]),
                variant=rec.get("variant") or "official",
                default=bool(rec.get("default")),
                title=models[rec["model"]]["title"],
                params=rec.get("params"),
                paper_psnr=_set5_psnr(metrics.get("paper")),
                reproduced_psnr=_set5_psnr(metrics.get("reproduced")),
                license=(rec.get("license") or {}).get("weights"),
                hosted_on_hub=_hub.is_published(rec),
                cached=_hub.is_cached(rec),
            )
        )
    return sorted(out, key=lambda m: (list(models).index(m.name), m.scale, not m.default, m.variant))


def download_weights(name: str, scale: int | None = None, *, variant: str | None = None) -> list[Path]:
    """Fetch and verify the weights of ``name`` (every scale, or just ``scale``) so later loads work offline.

    Weights come from the Hugging Face Hub where they are published there (none are yet: see
    ``ModelInfo.hosted_on_hub``), else from the upstream checkpoint at its pinned commit, converted here;
    cached files are verified against the manifest's sha256 and reused. Returns the local files, in scale
    order. With no network, each file fails at once with a ``DownloadError`` (one short connection check).

    Example:
        >>> import lightsr
        >>> [p.name for p in lightsr.download_weights("fdiwn", scale=2)]  # doctest: +SKIP
        ['fdiwn_x2.safetensors']
    """
    if scale is None:
        if name.lower() not in _zoo.model_names():
            raise UnknownModelError(name, _zoo.model_names())
        scales = list(_zoo.scales_of(name.lower()))
    else:
        scales = [_zoo.check_scale(scale, name)]
    return [_hub.resolve_weights(describe(name, s, variant)) for s in scales]
