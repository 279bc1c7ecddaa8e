"""medseg: medical image segmentation toolkit (model zoo, block library, pipeline)."""

from medseg.errors import MedsegError
from medseg.outputs import SegOutput
from medseg.registry import count_parameters, create_model, list_models, model_info

__version__ = "0.1.0"

__all__ = ["MedsegError", "SegOutput", "__version__", "count_parameters", "create_model", "list_models",
           "model_info"]
