"""Model names -> manifest records -> networks. Data in, objects out; no downloading here."""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from lightsr.archs import ArchTraits, NativeRange, get_family
from lightsr.errors import UnknownModelError, UnsupportedScaleError

MANIFEST_NAME = "weights_manifest.json"


def manifest_path() -> Path:
    """Where the manifest is read from: inside the installed wheel, else the source checkout's root."""
    packaged = resources.files("lightsr") / MANIFEST_NAME
    if packaged.is_file():
        return Path(str(packaged))
    # Source checkout / editable install: the one source of truth at the repository root.
    return Path(__file__).resolve().parent.parent / MANIFEST_NAME


@lru_cache(maxsize=1)
def load_manifest() -> dict[str, Any]:
    """The parsed manifest (cached; treat as read-only)."""
    with open(manifest_path(), encoding="utf-8") as fh:
        return json.load(fh)


def model_names() -> tuple[str, ...]:
    return tuple(load_manifest()["models"])


def records() -> list[dict[str, Any]]:
    return list(load_manifest()["weights"])


def scales_of(name: str) -> tuple[int, ...]:
    return tuple(sorted({r["scale"] for r in records() if r["model"] == name}))


def check_scale(scale: Any, name: str | None = None) -> int:
    """``scale`` as an int, refusing what is not a whole number (2.7, True, "4") instead of truncating it.

    Whole floats (4.0) and numpy integers are accepted. A refusal is an :class:`UnsupportedScaleError`
    (a ``ValueError``) listing the model's scales (every model's, when ``name`` is None or unknown).
    """
    if not isinstance(scale, bool):
        try:
            return operator.index(scale)
        except TypeError:
            if isinstance(scale, float) and scale.is_integer():
                return int(scale)
    key = (name or "").lower()
    named = key in load_manifest()["models"]
    known = scales_of(key) if named else tuple(sorted({r["scale"] for r in records()}))
    err = UnsupportedScaleError(key or "any", scale, known)  # type: ignore[arg-type]
    # The class's own text says "no weights for x2.7": the real problem is the type, so say that instead.
    err.args = (
        f"scale must be a whole number (an int such as {known[0]}), not {scale!r}; "
        + (f"model {key!r} has " if named else "lightsr's models have ")
        + f"scale(s) {', '.join(map(str, known))}: pass e.g. scale={known[-1]}",
    )
    raise err


def find_record(name: str, scale: int, variant: str | None = None) -> dict[str, Any]:
    """The manifest record for (name, scale[, variant]); the default one when ``variant`` is None."""
    key = name.lower()
    if key not in load_manifest()["models"]:
        raise UnknownModelError(name, model_names())
    scale = check_scale(scale, key)
    candidates = [r for r in records() if r["model"] == key and r["scale"] == scale]
    if not candidates:
        raise UnsupportedScaleError(key, scale, scales_of(key))
    if variant is None:
        defaults = [r for r in candidates if r.get("default")]
        return defaults[0] if defaults else candidates[0]
    for r in candidates:
        if r["variant"] == variant:
            return r
    raise UnknownModelError(f"{key}:{variant}", tuple(f"{key}:{r['variant']}" for r in candidates))


# What a record's "precision" entry may set: measured per checkpoint, so kept in the manifest, not code.
PRECISION_FLAGS = ("bf16_safe", "fp16_safe")


def record_traits(family_traits: ArchTraits, record: dict[str, Any]) -> ArchTraits:
    """The family's traits for the record's config, with the record's measured precision safety applied.

    A record's ``precision`` entry (e.g. ``{"bf16_safe": false, "why": "Set5 -0.047 dB ..."}``) states what
    was measured on that checkpoint; anything it does not state keeps the family's default.

    Example:
        >>> record_traits(ArchTraits(min_size=15), {"precision": {"bf16_safe": False, "why": "..."}})
        ArchTraits(min_size=15, size_multiple=1, fp16_safe=True, bf16_safe=False, tile_align=1)
    """
    entry = record.get("precision") or {}
    unknown = set(entry) - {*PRECISION_FLAGS, "why"}
    if unknown or not all(isinstance(entry[k], bool) for k in PRECISION_FLAGS if k in entry):
        raise ValueError(
            f"manifest record {record.get('model')} x{record.get('scale')}: 'precision' takes booleans "
            f"{', '.join(PRECISION_FLAGS)} and a 'why'; got {entry!r}"
        )
    return replace(family_traits, **{k: entry[k] for k in PRECISION_FLAGS if k in entry})


@dataclass(frozen=True)
class ModelDescriptor:
    """What lightsr knows about one (model, scale) network: enough to build, feed and describe it.

    ``input_range`` is the checkpoint's native range (1 or 255); the module lightsr hands out always
    takes and returns 0..1. ``traits`` carries the size constraints and precision safety.
    """

    name: str
    scale: int
    arch: str
    arch_config: dict[str, Any]
    input_range: float
    traits: ArchTraits
    record: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ModelDescriptor:
        family = get_family(record["arch"])
        config = dict(record["arch_config"] or {})
        return cls(
            name=record["model"],
            scale=int(record["scale"]),
            arch=record["arch"],
            arch_config=config,
            input_range=float(record["input_range"]),
            traits=record_traits(family.traits(config), record),
            record=record,
        )

    def build_network(self) -> nn.Module:
        """The bare network in its native range (keys match the converted safetensors file)."""
        return get_family(self.arch).build(dict(self.arch_config))

    def wrap(self, net: nn.Module) -> NativeRange:
        """The 0..1-in, 0..1-out module around ``net``."""
        return NativeRange(net, self.input_range)


def describe(name: str, scale: int, variant: str | None = None) -> ModelDescriptor:
    return ModelDescriptor.from_record(find_record(name, scale, variant))
