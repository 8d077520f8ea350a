"""The only importer of huggingface_hub: find, download, verify and cache weights.

Placeholder until the Hub issue lands: only local files (``weights=``) are supported.
"""

from __future__ import annotations

from pathlib import Path

from lightsr._zoo import ModelDescriptor
from lightsr.errors import WeightsNotFoundError


def resolve_weights(desc: ModelDescriptor) -> Path:
    """Local path of the verified converted weights for ``desc``, downloading them if needed."""
    up = desc.record["upstream"]
    raise WeightsNotFoundError(
        f"no local weights for {desc.name} x{desc.scale}: pass weights= with a converted .safetensors file "
        f"or the upstream checkpoint {up['filename']} ({up['url']})"
    )
