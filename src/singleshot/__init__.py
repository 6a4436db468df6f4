"""singleshot: the SSD object detector (Liu et al., 2016) in PyTorch.

>>> import singleshot
>>> model = singleshot.build_model("ssd300_voc")
>>> detections = model.predict("street.jpg")   # boxes in the image's pixels
"""

from .checkpoint import load
from .models.ssd import SSD
from .presets import available_models, build_model

__all__ = ["SSD", "available_models", "build_model", "load", "__version__"]
__version__ = "0.1.0"
