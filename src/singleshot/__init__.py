"""singleshot: the SSD object detector (Liu et al., 2016) in PyTorch.

>>> import singleshot
>>> model = singleshot.build_model("ssd300_voc")
>>> detections = model.predict("street.jpg")   # boxes in the image's pixels

The names below load their modules (and the models) on first use (PEP 562), so
``import singleshot.boxes`` or ``singleshot --help`` does not build the model zoo.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from .checkpoint import load
    from .models.ssd import SSD
    from .presets import available_models, build_model

__all__ = ["SSD", "available_models", "build_model", "load", "__version__"]
__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "SSD": ".models.ssd",
    "available_models": ".presets",
    "build_model": ".presets",
    "load": ".checkpoint",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
