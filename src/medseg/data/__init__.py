"""The data layer: medical formats with geometry, data set layouts, preprocessing, cache, sampling,
batched augmentation and synthetic data. A leaf package: it never imports models or engine."""

from medseg.data.augment import AugmentationConfig, BatchAugmenter
from medseg.data.cache import PreprocessedCache
from medseg.data.cases import read_case
from medseg.data.check import CheckReport, check_dataset
from medseg.data.datasets import (
    Case,
    Dataset,
    kfold_splits,
    load_dataset,
    read_splits,
    train_val_split,
    write_splits,
)
from medseg.data.geometry import DataError, Geometry
from medseg.data.io import (
    case_id,
    has_non_finite,
    image_extensions,
    read_image,
    read_mask,
    write_image,
    write_mask,
)
from medseg.data.loader import build_train_loader
from medseg.data.preprocess import Preprocessor, map_labels, normalize, resample, resize
from medseg.data.sampling import PatchSampler
from medseg.data.synthetic import (
    make_lesion_volume,
    make_nuclei_image,
    make_polyp_image,
    write_lesion_dataset,
    write_nuclei_dataset,
    write_polyp_dataset,
)

__all__ = [  # one name a line, so that modules added side by side merge
    "AugmentationConfig",
    "BatchAugmenter",
    "PreprocessedCache",
    "read_case",
    "CheckReport",
    "check_dataset",
    "Case",
    "Dataset",
    "kfold_splits",
    "load_dataset",
    "read_splits",
    "train_val_split",
    "write_splits",
    "DataError",
    "Geometry",
    "case_id",
    "has_non_finite",
    "image_extensions",
    "read_image",
    "read_mask",
    "write_image",
    "write_mask",
    "build_train_loader",
    "Preprocessor",
    "map_labels",
    "normalize",
    "resample",
    "resize",
    "PatchSampler",
    "make_lesion_volume",
    "make_nuclei_image",
    "make_polyp_image",
    "write_lesion_dataset",
    "write_nuclei_dataset",
    "write_polyp_dataset",
]
