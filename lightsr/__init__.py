"""lightsr: lightweight single-image super-resolution, one line away.

Example:
    >>> import torch, lightsr
    >>> up = lightsr.load_model("rfdn", scale=4, weights="../shared/weights/RFDN_AIM_x4.pth")
    >>> up.upscale(torch.rand(1, 3, 20, 20)).shape
    torch.Size([1, 3, 80, 80])
"""

from lightsr import errors
from lightsr._api import ModelInfo, convert_checkpoint, download_weights, list_models
from lightsr._engine import Upscaler, load_model, upscale
from lightsr._evaluate import evaluate
from lightsr._export import export
from lightsr._version import __version__

__all__ = [
    "ModelInfo",
    "Upscaler",
    "__version__",
    "convert_checkpoint",
    "download_weights",
    "errors",
    "evaluate",
    "export",
    "list_models",
    "load_model",
    "upscale",
]
