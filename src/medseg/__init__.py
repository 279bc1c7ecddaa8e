"""medseg: medical image segmentation toolkit (model zoo, block library, pipeline)."""

from medseg.errors import MedsegError
from medseg.models.registry import count_parameters, create_model, list_models, model_info
from medseg.outputs import SegOutput

__version__ = "0.1.0"

__all__ = ["MedsegError", "SegOutput", "__version__", "count_parameters", "create_model", "list_models",
           "model_info"]
