"""Pieces shared by the architecture files: the family contract, the traits record, the exact-fit check,
config validation and the 0..1 range adapter."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from lightsr.errors import CheckpointError


@dataclass(frozen=True)
class ArchTraits:
    """What a caller must know about a network to feed it.

    min_size: the smallest input height/width (in LR pixels) the network accepts.
    size_multiple: input height and width must be multiples of this.
    fp16_safe / bf16_safe: whether reduced precision keeps quality (checked by the precision tests). These
        are the family's defaults; a manifest record's ``precision`` entry overrides them for one checkpoint.
    tile_align: the stride of the network's coarse (downsampled) branches, e.g. 6 for ESA's stride-2
        conv then stride-3 max-pool. Tile windows start on multiples of it, so every tile sees the
        same coarse grid as the whole image (1: the network has no such branch).
    """

    min_size: int = 1
    size_multiple: int = 1
    fp16_safe: bool = True
    bf16_safe: bool = True
    tile_align: int = 1


@runtime_checkable
class ArchFamily(Protocol):
    """What every architecture family module provides (``lightsr.archs.<family>``; docs/contributing.md).

    ``build(config)``: the network for a manifest ``arch_config``, in the checkpoint's native value range.
    ``traits(config)``: its :class:`ArchTraits`. ``convert_state_dict(state_dict, config)``: upstream tensors
    to ``build``'s keys, by exactly-equivalent rewrites only. ``match_state_dict(state_dict)``: the config an
    upstream state dict fits exactly (:func:`exact_fit`), or None. ``SKETCHES``: model name -> a few lines
    of architecture sketch for the docs. ``CONVERSION_SHRINKS``: None, or why ``convert_state_dict`` leaves
    fewer parameters than the upstream file holds (e.g. CARN-M's unused heads).
    """

    SKETCHES: Mapping[str, str]
    CONVERSION_SHRINKS: str | None

    def build(self, config: dict[str, Any]) -> nn.Module: ...

    def traits(self, config: dict[str, Any]) -> ArchTraits: ...

    def convert_state_dict(
        self, state_dict: dict[str, torch.Tensor], config: dict[str, Any]
    ) -> dict[str, torch.Tensor]: ...

    def match_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, Any] | None: ...


def shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> tensor shape (raises AttributeError on a value that is not a tensor)."""
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def exact_fit(
    build: Callable[[dict[str, Any]], nn.Module], config: dict[str, Any], state_dict: Mapping[str, Any]
) -> dict[str, Any] | None:
    """``config`` if ``build(config)`` has exactly ``state_dict``'s keys with the same shapes, else None.

    The one "does this checkpoint fit" rule of every ``match_state_dict``: a guess read from a few shapes is
    accepted only if the whole network it describes matches, so look-alike key patterns of other families
    are refused. Built on the meta device: shapes only, no memory, no initialisation. A config ``build``
    refuses, or values that are not tensors, are no fit.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> exact_fit(lambda c: nn.Conv2d(3, c["n"], 3), {"n": 8}, nn.Conv2d(3, 8, 3).state_dict())
        {'n': 8}
        >>> exact_fit(lambda c: nn.Conv2d(3, c["n"], 3), {"n": 4}, nn.Conv2d(3, 8, 3).state_dict()) is None
        True
    """
    try:
        with torch.device("meta"):
            expected = shapes(build(config).state_dict())
        actual = shapes(state_dict)
    except (CheckpointError, ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError):
        return None
    return config if expected == actual else None


def check_keys(
    family: str,
    config: Mapping[str, Any],
    allowed: Iterable[str],
    example: Mapping[str, Any],
    required: Iterable[str] = ("scale",),
) -> None:
    """A :class:`CheckpointError` unless ``config`` is a mapping with only ``allowed`` keys and every
    ``required`` one (the scale, by default: it always comes from the record, never from a default).

    Example:
        >>> check_keys("toy", {"scale": 4}, ("scale", "width"), {"scale": 4})
        >>> try:
        ...     check_keys("toy", {"scale": 4, "widht": 8}, ("scale", "width"), {"scale": 4})
        ... except CheckpointError as exc:
        ...     print(str(exc)[:45])
        toy arch_config has unknown key(s) ['widht']
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{family} arch_config must be a dict, got {config!r}; e.g. {dict(example)!r}")
    allowed = set(allowed)
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise CheckpointError(
            f"{family} arch_config has unknown key(s) {unknown}; the known keys are {sorted(allowed)}, "
            f"e.g. {dict(example)!r}"
        )
    missing = [key for key in required if key not in config]
    if missing:
        raise CheckpointError(
            f"{family} arch_config needs {', '.join(map(repr, missing))}; e.g. {dict(example)!r}"
        )


def positive_ints(
    family: str, config: Mapping[str, Any], keys: Iterable[str], example: Mapping[str, Any]
) -> tuple[int, ...]:
    """The values of ``keys`` in ``config`` as positive ints, or a :class:`CheckpointError` naming the family,
    the bad key and an example config. Whole floats (4.0) count; bools and strings do not.

    Example:
        >>> positive_ints("toy", {"scale": 4, "width": 8}, ("scale", "width"), {"scale": 4, "width": 8})
        (4, 8)
    """
    out = []
    for key in keys:
        value = config.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok and isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
        if not ok or value < 1:
            raise CheckpointError(
                f"{family} arch_config needs {key!r} as a positive integer, got "
                f"{'nothing' if key not in config else repr(config[key])}; e.g. {dict(example)!r}"
            )
        out.append(int(value))
    return tuple(out)


class NativeRange(nn.Module):
    """Wraps a network trained on 0..``value_range`` so that it takes and returns 0..1.

    The one place where checkpoint value ranges are handled: for ``value_range == 1`` it is a no-op.
    """

    def __init__(self, net: nn.Module, value_range: float = 1.0):
        super().__init__()
        self.net = net
        self.value_range = float(value_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.value_range == 1.0:
            return self.net(x)
        return self.net(x * self.value_range) / self.value_range
