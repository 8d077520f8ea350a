"""Public functions beyond load_model/upscale: conversion (and, as issues land, listing and downloads)."""

from __future__ import annotations

import os

from lightsr._weights import convert_file
from lightsr._zoo import describe


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
    The source is read with ``torch.load(weights_only=True)``: no pickled code is ever run.

    Example:
        >>> import lightsr, tempfile, os
        >>> dst = os.path.join(tempfile.mkdtemp(), "rfdn_x4.safetensors")
        >>> len(lightsr.convert_checkpoint("../shared/weights/RFDN_AIM_x4.pth", dst, model="rfdn", scale=4))
        64
    """
    return convert_file(src, dst, describe(model, scale, variant))
