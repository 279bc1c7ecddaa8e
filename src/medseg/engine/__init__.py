"""Training, inference, evaluation and measurement machinery (imports models; never imported by them).

Names are imported lazily, so that ``import medseg.engine.benchmark`` (used by every CLI command) does not
load the trainer, the report renderer or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "benchmark": ("PEERS", "BenchmarkJob", "BenchmarkResult", "benchmark_model", "benchmark_models",
                  "count_macs", "format_table", "measure_peak_memory", "write_benchmark_report"),
    "checkpoint": ("CheckpointError", "build_model_from_checkpoint", "load_checkpoint", "make_checkpoint",
                   "save_checkpoint"),
    "config": ("ConfigError", "RunConfig", "config_from_dict", "load_config", "save_config"),
    "demo": ("run_demo",),
    "evaluate": ("evaluate_folders",),
    "inference": ("ensemble_predict", "gaussian_importance_map", "logits_to_labels",
                  "logits_to_probabilities", "sliding_window_inference", "whole_image_inference"),
    "postprocess": ("PostprocessOptions", "postprocess"),
    "predict": ("predict_paths",),
    "trainer": ("TrainResult", "train"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'medseg.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medseg.engine.{module}"), name)
