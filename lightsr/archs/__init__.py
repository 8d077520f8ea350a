"""Network definitions, one file per architecture family: pure ``nn.Module`` code, no I/O.

Every family module exposes the same small contract, used by ``lightsr._zoo`` and ``lightsr._weights``:

``build(config: dict) -> nn.Module``
    The network, built from the manifest's ``arch_config``; it takes and returns the checkpoint's
    *native* value range (0..1 or 0..255). ``lightsr._zoo`` wraps it so callers always see 0..1.
``traits(config: dict) -> ArchTraits``
    What callers must know: minimum input side, size multiple, whether fp16/bf16 are safe.
``convert_state_dict(state_dict: dict, config: dict) -> dict``
    Upstream tensors (wrapper keys and ``module.`` prefixes already removed) to the keys of ``build``'s
    module; only exactly-equivalent rewrites (renames, weight-norm folding).
``match_state_dict(state_dict: dict) -> dict | None``
    The ``arch_config`` this upstream state dict fits, or ``None``; used to recognise unnamed checkpoints.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lightsr.archs._common import ArchTraits, NativeRange

__all__ = ["FAMILIES", "ArchTraits", "NativeRange", "get_family"]

# family name -> module; imported lazily so importing lightsr does not import every network.
FAMILIES: dict[str, str] = {
    "rfdn": "lightsr.archs.rfdn",
    "imdn": "lightsr.archs.imdn",
    "fdiwn": "lightsr.archs.fdiwn",
    "rlfn": "lightsr.archs.rlfn",
    "bsrn": "lightsr.archs.bsrn",
    "carn": "lightsr.archs.carn",
    "pan": "lightsr.archs.pan",
    "span": "lightsr.archs.span",
    "safmn": "lightsr.archs.safmn",
}


def get_family(arch: str) -> ModuleType:
    """Return the module implementing architecture family ``arch`` (a key of ``FAMILIES``)."""
    try:
        return importlib.import_module(FAMILIES[arch])
    except KeyError:
        raise KeyError(f"unknown architecture family {arch!r}; known: {sorted(FAMILIES)}") from None
