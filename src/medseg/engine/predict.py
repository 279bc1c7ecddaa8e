"""``medseg predict``: checkpoints + an image file or folder -> label maps in the source format and geometry.

A ``medseg export`` file (TorchScript ``.pt``, ``.onnx``) may stand in for a checkpoint: it carries the
checkpoint's classes, preprocessing and patch size (:mod:`medseg.engine.export`) and runs in the same
sliding window.

Per case (nnU-Net's ``predict_from_raw_data`` structure): read the image with its geometry, preprocess it
with the checkpoint's :class:`~medseg.data.Preprocessor`, predict logits (whole image, or Gaussian-weighted
sliding window when a patch size is known, slice by slice for 2.5D checkpoints
(:mod:`medseg.engine.slice_inference`); mirroring TTA; several checkpoints averaged as probabilities),
convert to labels (threshold / argmax), postprocess, map back to the source grid
(:meth:`Preprocessor.revert`) and write the mask under the source case id, with optional probabilities and
a PNG overlay for 2D images.

Every output file is written atomically; when a case fails, the files already written for it are removed,
so no partial case remains. A killed run leaves only complete files (and perhaps hidden temporaries, which
the next run removes when it writes that case again); running the command again skips the cases whose
every output exists (``overwrite`` rewrites them). Sharding across ``torchrun`` ranks and overlapped
reading / inference / writing (``workers``): :mod:`medseg.engine.predict_scale`.
Errors are :class:`~medseg.errors.MedsegError` (one line, exit 2 on the CLI).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from medseg.data.cases import read_case
from medseg.data.datasets import Case, cases_of_files, image_files, is_nnunet_folder
from medseg.data.geometry import DataError, Geometry
from medseg.data.io import case_id, image_extension, lossless_mask_path, write_image, write_mask
from medseg.data.preprocess import PreprocessedCase, Preprocessor
from medseg.engine.cascade import coarse_channel_count, coarse_onehot
from medseg.engine.checkpoint import (
    CheckpointError,
    build_model_from_checkpoint,
    checkpoint_patch_size,
    load_checkpoint,
)
from medseg.engine.device import resolve_device
from medseg.engine.display import OVERLAY_COLOURS, display_image, overlay_png  # noqa: F401 (re-exported)
from medseg.engine.distributed import (
    DistributedContext,
    abort_distributed,
    all_reduce_sum,
    barrier,
    init_distributed,
    rank_device,
    shutdown_distributed,
)
from medseg.engine.export import is_exported, load_exported
from medseg.engine.inference import (
    PaddedPredictor,
    Predictor,
    ensemble_predict,
    logits_to_labels,
    logits_to_probabilities,
    predict_logits,
    probabilities_to_labels,
)
from medseg.engine.postprocess import PostprocessOptions, postprocess
from medseg.engine.predict_scale import (
    case_is_finished,
    check_workers,
    run_pipelined,
    run_record,
    same_run,
    shard,
    write_run_record,
)
from medseg.engine.slice_inference import SlicePredictor
from medseg.errors import MedsegError
from medseg.fileio import remove_stale_temporaries_of, write_bytes_atomically

logger = logging.getLogger(__name__)

__all__ = ["LoadedModel", "PredictSettings", "find_cases", "load_models", "loaded_model", "predict_case",
           "predict_labels", "predict_paths"]

PROBABILITY_SUFFIX = "_probabilities"
OVERLAY_FOLDER = "overlays"
ENSEMBLE_KEYS = ("label_mode", "class_names", "in_channels", "num_classes", "spatial_dims", "preprocessing")


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint and what prediction needs from the checkpoint."""

    path: Path
    model: nn.Module
    label_mode: str
    class_names: list[str] | None
    in_channels: int
    num_classes: int
    spatial_dims: int
    preprocessing: dict[str, Any]
    inference: dict[str, Any]
    patch_size: tuple[int, ...] | None
    channels_suffix: bool | None = None
    slices: int | None = None
    slice_axes: tuple[int, ...] = ()
    """2.5D checkpoints (``data.slices``): k and the array axes; ``in_channels`` and ``spatial_dims`` are
    then the images' (the 2D network takes ``in_channels x (2k + 1)`` channels)."""

    stage1: LoadedModel | None = None
    """A cascade's stage 1 (:mod:`medseg.engine.cascade`), whose coarse segmentation is an input."""

    def predictor(self) -> Predictor:
        """The network padded to its input multiple; for a 2.5D checkpoint, volumes rebuilt slice by slice
        (tri-planar: probabilities averaged over the axes), ``window_batch_size`` slices per forward."""
        padded = PaddedPredictor(self.model)
        if self.slices is None:
            return padded
        batch = int(self.inference.get("window_batch_size") or 4)
        return SlicePredictor(padded, self.slice_axes, self.slices, self.label_mode, batch)

    @property
    def coarse_channels(self) -> int:
        """Input channels taken by the stage-1 coarse segmentation (0 outside a cascade)."""
        return 0 if self.stage1 is None else coarse_channel_count(self.label_mode, self.num_classes)

    @property
    def image_channels(self) -> int:
        """Channels of the images the model is given (its input channels, less the coarse ones)."""
        return self.in_channels - self.coarse_channels


def load_models(checkpoints: Sequence[str | Path], device: torch.device) -> list[LoadedModel]:
    """Load the checkpoints (``weights_only``) and rebuild their networks on ``device``; an ensemble must
    share label mode, classes, channels, dimensionality and preprocessing (else an error naming the
    checkpoint)."""
    if not checkpoints:
        raise MedsegError("predict needs at least one checkpoint")
    loaded = [_load_exported(path, device) if is_exported(path)
              else loaded_model(path, load_checkpoint(path), device) for path in map(Path, checkpoints)]
    _check_compatible(loaded)
    return loaded


def loaded_model(path: Path, ckpt: Mapping[str, Any], device: torch.device) -> LoadedModel:
    """The network of a loaded checkpoint on ``device`` with its records; a cascade's stage 2 with its
    embedded stage 1 (``ckpt["cascade"]["stage1"]``)."""
    try:
        model = build_model_from_checkpoint(ckpt)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    cascade = ckpt.get("cascade") or {}
    stage1 = None
    if cascade:
        if not isinstance(cascade.get("stage1"), Mapping):
            raise CheckpointError(f"checkpoint {path}: a cascade record without its stage-1 checkpoint")
        stage1 = loaded_model(Path(f"{path}#stage1"), cascade["stage1"], device)
    return _loaded_model(
        path, model.to(device).eval(), ckpt.get("model") or {}, label_mode=ckpt.get("label_mode", "binary"),
        class_names=ckpt.get("class_names"), preprocessing=ckpt.get("preprocessing"),
        inference=ckpt.get("inference"), patch_size=checkpoint_patch_size(ckpt),
        channels_suffix=((ckpt.get("config") or {}).get("data") or {}).get("channels_suffix"), stage1=stage1)


def _loaded_model(path: Path, model: nn.Module, record: Mapping[str, Any], *, label_mode: str,
                  class_names: list[str] | None, preprocessing: Mapping[str, Any] | None,
                  inference: Mapping[str, Any] | None, patch_size: Sequence[int] | None,
                  channels_suffix: bool | None, stage1: LoadedModel | None = None) -> LoadedModel:
    """A :class:`LoadedModel` from the model record and facts of a checkpoint or an export (2.5D
    checkpoints: the images' channels and dimensionality, no patch)."""
    inference = dict(inference or {})
    slices = inference.get("slices")
    width = 1 if slices is None else 2 * int(slices) + 1
    return LoadedModel(
        path=path, model=model, label_mode=str(label_mode), class_names=class_names,
        in_channels=int(record["in_channels"]) // width, num_classes=int(record["num_classes"]),
        spatial_dims=int(record["spatial_dims"]) if slices is None else 3,
        preprocessing=dict(preprocessing or {}), inference=inference,
        patch_size=tuple(int(p) for p in patch_size) if patch_size is not None and slices is None else None,
        channels_suffix=channels_suffix, stage1=stage1, slices=None if slices is None else int(slices),
        slice_axes=tuple(int(a) for a in inference.get("slice_axes") or ()))


def _load_exported(path: Path, device: torch.device) -> LoadedModel:
    """A ``medseg export`` file (TorchScript ``.pt`` / ``.onnx``) with the checkpoint facts it stores."""
    model = load_exported(path, device)
    meta = model.metadata
    return _loaded_model(path, model, meta["model"], label_mode=meta.get("label_mode", "binary"),
                         class_names=meta.get("class_names"), preprocessing=meta.get("preprocessing"),
                         inference=meta.get("inference"), patch_size=meta.get("patch_size"),
                         channels_suffix=meta.get("channels_suffix"))


def _check_compatible(models: Sequence[LoadedModel]) -> None:
    first = models[0]
    for other in models[1:]:
        if (other.stage1 is None) != (first.stage1 is None):
            raise CheckpointError(f"checkpoint {other.path} cannot be ensembled with {first.path}: one is a "
                                  "cascade stage 2, the other not")
        for key in ENSEMBLE_KEYS:
            if getattr(other, key) != getattr(first, key):
                raise CheckpointError(f"checkpoint {other.path} cannot be ensembled with {first.path}: its "
                                      f"{key} {getattr(other, key)!r} differs from {getattr(first, key)!r}")


# ----------------------------------------------------------------------------------------------------
# Settings and cases
# ----------------------------------------------------------------------------------------------------

@dataclass
class PredictSettings:
    """How to predict (defaults from the first checkpoint's ``inference`` record, then the arguments)."""

    mode: str = "auto"
    step: float = 0.5
    sigma_scale: float = 0.125
    window_batch_size: int = 4
    mirror: bool = True
    mirror_axes: tuple[int, ...] | None = None
    accumulate_on: str = "auto"
    threshold: float = 0.5
    postprocess: PostprocessOptions = field(default_factory=PostprocessOptions)
    save_probabilities: bool = False
    overlays: bool = True

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PredictSettings:
        """Settings from a checkpoint's ``inference`` dict (unknown keys ignored)."""
        known = {f.name for f in fields(cls)} - {"postprocess"}
        values = {k: v for k, v in record.items() if k in known}
        if values.get("mirror_axes") is not None:
            values["mirror_axes"] = tuple(values["mirror_axes"])
        post = dict(record.get("postprocess") or {})
        for key in ("largest_component", "fill_holes"):
            if isinstance(post.get(key), list):
                post[key] = tuple(post[key])
        known_post = {f.name for f in fields(PostprocessOptions)}
        options = PostprocessOptions(**{k: v for k, v in post.items() if k in known_post})
        return cls(**values, postprocess=options)


def find_cases(input_path: Path, in_channels: int, channels_suffix: bool | None = None) -> list[Case]:
    """The cases of a file or a folder: every image file is one case (sub-folders searched too, their
    images named ``sub__name`` by :func:`~medseg.data.datasets.nested_case_id`), except that nnU-Net
    channel files ``{case}_{XXXX}`` are grouped into one case when ``channels_suffix`` is true, or when
    it is ``None`` and the folder belongs to the Decathlon / nnU-Net layout (``imagesTs/``, ``imagesTr/``,
    beside a ``dataset.json``)."""
    if not input_path.exists():
        raise MedsegError(f"input {input_path}: no such file or folder")
    if input_path.is_file():
        return [Case(case_id(input_path), [input_path])]
    if channels_suffix is None:
        channels_suffix = is_nnunet_folder(input_path)
    files = image_files(input_path, recursive=not channels_suffix)
    if not files:
        raise MedsegError(f"input folder {input_path} holds no image file")
    expected = in_channels if in_channels > 1 else None
    cases, problems, _ = cases_of_files(files, channels_suffix, set(), expected, root=input_path)
    if in_channels == 1:  # single-channel models: a lone `_0000` file is a grouped case of one channel
        problems = [p for p in problems if "beyond" not in p.problem]
    if problems:
        raise MedsegError(f"input folder {input_path}: {problems[0]}"
                          + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    return sorted(cases, key=lambda c: c.case_id)


# ----------------------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------------------

def _window_options(settings: PredictSettings, models: Sequence[LoadedModel], device: torch.device,
                    spatial_dims: int) -> dict[str, Any]:
    first = models[0]
    sliding = settings.mode == "sliding_window" or (settings.mode == "auto" and first.patch_size is not None)
    if sliding and first.patch_size is None:
        raise MedsegError(f"checkpoint {first.path}: sliding-window inference needs inference.patch_size")
    axes = (settings.mirror_axes if settings.mirror_axes is not None else tuple(range(spatial_dims))) \
        if settings.mirror else None
    options: dict[str, Any] = {"mirror_axes": axes, "device": device}
    if sliding:
        options.update(patch_size=first.patch_size, step=settings.step, sigma_scale=settings.sigma_scale,
                       window_batch_size=settings.window_batch_size)
        if settings.accumulate_on != "auto":
            options["accumulate_device"] = device if settings.accumulate_on == "device" else "cpu"
    return options


def _predict_probabilities(models: Sequence[LoadedModel], image: Tensor, settings: PredictSettings,
                           device: torch.device) -> tuple[Tensor, bool]:
    """Logits (one model; ``False``) or averaged probabilities (an ensemble; ``True``) ``[K, *spatial]``."""
    first = models[0]
    options = _window_options(settings, models, device, image.ndim - 1)
    predictors = [m.predictor() for m in models]
    if len(predictors) == 1:
        return predict_logits(predictors[0], image, first.num_classes, **options), False
    return ensemble_predict(predictors, image, first.num_classes, first.label_mode, **options), True




@dataclass
class CaseOutputs:
    """Where one case's outputs go."""

    mask: Path
    probabilities: Path | None
    overlay: Path | None


def _outputs_for(case: Case, folder: Path, spatial_dims: int, settings: PredictSettings,
                 mask_path: Path | None = None) -> CaseOutputs:
    source = case.images[0]
    extension = image_extension(source) or ".nii.gz"
    mask = mask_path or lossless_mask_path(folder / f"{case.case_id}{extension}")
    probability_ext = ".npz" if spatial_dims == 2 else ".nii.gz"
    return CaseOutputs(
        mask=mask,
        probabilities=(mask.parent / f"{case.case_id}{PROBABILITY_SUFFIX}{probability_ext}"
                       if settings.save_probabilities else None),
        overlay=(mask.parent / OVERLAY_FOLDER / f"{case.case_id}.png"
                 if settings.overlays and spatial_dims == 2 else None))


def _revert_scores(scores: Tensor, preprocessor: Preprocessor, case: PreprocessedCase, mode: str,
                   are_probabilities: bool) -> Tensor:
    """Logits or probabilities ``[K, *spatial]`` mapped back to the source grid (linear interpolation,
    then labels: nnU-Net resamples scores, not labels). Outside the crop box: background (logits 0 tie
    to label 0 under argmax and fall below any threshold; multiclass probabilities get 1 in channel 0).
    With identity preprocessing nothing is copied."""
    reverted = preprocessor.revert(scores, case, order=1, fill=0.0)
    if are_probabilities and mode == "multiclass" and case.cropped_shape != case.original_shape:
        outside = torch.ones(case.original_shape, dtype=torch.bool, device=reverted.device)
        outside[tuple(slice(a, b) for a, b in case.crop_box)] = False
        reverted[0][outside] = 1.0
    return reverted.float()


def _write_outputs(outputs: CaseOutputs, image: np.ndarray, labels: np.ndarray, geometry: Geometry,
                   probabilities: np.ndarray | None, written: list[Path]) -> None:
    for path in (outputs.mask, outputs.probabilities, outputs.overlay):  # what a killed run left
        if path is not None:
            remove_stale_temporaries_of(path)
    written.append(outputs.mask)
    if labels.shape[0] == 1:
        write_mask(outputs.mask, labels, geometry)
    else:  # multilabel: one channel per class
        write_image(outputs.mask, labels, geometry)
    if outputs.probabilities is not None and probabilities is not None:
        written.append(outputs.probabilities)
        if outputs.probabilities.name.endswith(".npz"):
            buffer = io.BytesIO()
            np.savez_compressed(buffer, probabilities=probabilities)
            write_bytes_atomically(outputs.probabilities, buffer.getvalue())
        else:
            write_image(outputs.probabilities, probabilities, geometry)
    if outputs.overlay is not None:
        written.append(outputs.overlay)
        outputs.overlay.parent.mkdir(parents=True, exist_ok=True)
        shown = labels[0] if labels.shape[0] == 1 else labels
        write_bytes_atomically(outputs.overlay, overlay_png(image, shown))


def _stage1_settings(stage1: LoadedModel) -> PredictSettings:
    """How a cascade's stage 1 predicts: its checkpoint's inference settings, no extra outputs."""
    settings = PredictSettings.from_record(stage1.inference)
    settings.save_probabilities = settings.overlays = False
    return settings


def _with_coarse(models: Sequence[LoadedModel], image: np.ndarray, geometry: Geometry,
                 device: torch.device) -> np.ndarray:
    """The image; for a cascade's stage 2, with stage 1's labels appended one-hot
    (:mod:`medseg.engine.cascade`)."""
    first = models[0]
    if first.stage1 is None:
        return image
    coarse, _ = predict_labels([first.stage1], image, geometry, _stage1_settings(first.stage1), device)
    return np.concatenate([image.astype(np.float32, copy=False),
                           coarse_onehot(coarse, first.label_mode, first.num_classes)])


def _scores_to_labels(models: Sequence[LoadedModel], scores: Tensor, are_probabilities: bool,
                      prepared: PreprocessedCase, geometry: Geometry, settings: PredictSettings,
                      preprocessor: Preprocessor) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores back to the source grid, labels ``[1 or C, *spatial]`` (postprocessed) and the probabilities
    when ``settings.save_probabilities``."""
    first = models[0]
    scores = _revert_scores(scores, preprocessor, prepared, first.label_mode, are_probabilities)
    probabilities = None
    if settings.save_probabilities:
        probabilities = scores if are_probabilities else logits_to_probabilities(scores, first.label_mode)
    convert = probabilities_to_labels if are_probabilities else logits_to_labels
    labels = convert(scores, first.label_mode, settings.threshold)
    del scores
    labels = (labels[None] if labels.ndim == first.spatial_dims else labels).numpy()
    processed = postprocess(labels[0] if labels.shape[0] == 1 else labels, first.label_mode,
                            settings.postprocess, spacing=geometry.spacing)
    labels = processed[None] if processed.ndim == first.spatial_dims else processed
    return labels, None if probabilities is None else probabilities.numpy()


def predict_labels(models: Sequence[LoadedModel], image: np.ndarray, geometry: Geometry,
                   settings: PredictSettings, device: torch.device, preprocessor: Preprocessor | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Label maps ``[1 or C, *spatial]`` on the source grid of an image ``[C, *spatial]`` (and the
    probabilities when ``settings.save_probabilities``): preprocess, predict, map the scores back to the
    source grid, convert to labels and postprocess. A cascade's stage 2 first predicts the stage-1 labels
    and appends them one-hot to the image. From the preprocessed image to the labels everything stays in
    torch (only resampling to a source spacing goes through scipy)."""
    preprocessor = preprocessor or Preprocessor.from_dict(models[0].preprocessing)
    read = _prepare(models, image, geometry, preprocessor, device)
    scores, are_probabilities = infer_scores(models, read, settings, device)
    return _scores_to_labels(models, scores, are_probabilities, read.prepared, geometry, settings,
                             preprocessor)


@dataclass
class ReadCase:
    """A case read and preprocessed (the first stage of :func:`predict_case`)."""

    image: np.ndarray
    geometry: Geometry
    prepared: PreprocessedCase


def read_for_prediction(models: Sequence[LoadedModel], case: Case, preprocessor: Preprocessor,
                        device: torch.device) -> ReadCase:
    """Read a case as training reads cases (:func:`~medseg.data.cases.read_case`), check its channels and
    dimensionality against the model and preprocess it (a cascade's stage 1 runs here, on ``device``)."""
    first = models[0]
    image, _, geometry = read_case(case, with_label=False)
    if image.shape[0] != first.image_channels:
        hint = " (for one file per channel, {case}_0000, {case}_0001, ..., pass --channels-suffix)" \
            if len(case.images) == 1 and first.image_channels > image.shape[0] else ""
        raise DataError(case.images[0], f"{image.shape[0]} channels, the model takes "
                                        f"{first.image_channels}" + hint)
    if geometry.spatial_dims != first.spatial_dims:
        raise DataError(case.images[0], f"{geometry.spatial_dims}D image, the model is "
                                        f"{first.spatial_dims}D")
    return _prepare(models, image, geometry, preprocessor, device)


def _prepare(models: Sequence[LoadedModel], image: np.ndarray, geometry: Geometry,
             preprocessor: Preprocessor, device: torch.device) -> ReadCase:
    """The image preprocessed for the network (a cascade's stage 2: with stage 1's coarse labels)."""
    network_input = _with_coarse(models, image, geometry, device)
    return ReadCase(image, geometry, preprocessor(network_input, None, geometry))


def infer_scores(models: Sequence[LoadedModel], read: ReadCase, settings: PredictSettings,
                 device: torch.device) -> tuple[Tensor, bool]:
    """The network stage: logits (one model; ``False``) or averaged probabilities (``True``) on the CPU."""
    scores, are_probabilities = _predict_probabilities(models, torch.from_numpy(read.prepared.image),
                                                       settings, device)
    return scores.cpu(), are_probabilities


def finish_case(models: Sequence[LoadedModel], read: ReadCase, scores: Tensor, are_probabilities: bool,
                outputs: CaseOutputs, settings: PredictSettings, preprocessor: Preprocessor) -> Path:
    """Scores back to the source grid, labels, postprocessing and the case's files (removed again when
    writing fails)."""
    written: list[Path] = []
    try:
        labels, probabilities = _scores_to_labels(models, scores, are_probabilities, read.prepared,
                                                  read.geometry, settings, preprocessor)
        _write_outputs(outputs, read.image, labels, read.geometry, probabilities, written)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return outputs.mask


def predict_case(models: Sequence[LoadedModel], case: Case, outputs: CaseOutputs, settings: PredictSettings,
                 device: torch.device, preprocessor: Preprocessor | None = None) -> Path:
    """Predict one case and write its outputs; on failure the files written for it are removed.

    ``preprocessor``: the checkpoints' preprocessing, built once per run (default: built here). The three
    stages are :func:`read_for_prediction`, :func:`infer_scores` and :func:`finish_case`; from the
    preprocessed image to the labels everything stays in torch (only resampling to a source spacing goes
    through scipy), and the labels become numpy for postprocessing and writing.
    """
    preprocessor = preprocessor or Preprocessor.from_dict(models[0].preprocessing)
    read = read_for_prediction(models, case, preprocessor, device)
    scores, are_probabilities = infer_scores(models, read, settings, device)
    return finish_case(models, read, scores, are_probabilities, outputs, settings, preprocessor)


# ----------------------------------------------------------------------------------------------------
# The command's function
# ----------------------------------------------------------------------------------------------------

def _settings(models: Sequence[LoadedModel], tta: bool | None, step: float | None,
              postprocess: PostprocessOptions | None, save_probabilities: bool,
              overlays: bool) -> PredictSettings:
    """The first checkpoint's ``inference`` record, then the arguments given."""
    settings = PredictSettings.from_record(models[0].inference)
    if tta is not None:
        settings.mirror = tta
    if step is not None:
        if not 0 < step <= 1:
            raise MedsegError(f"step must be in (0, 1], got {step}")
        settings.step = step
    if postprocess is not None:
        settings.postprocess = postprocess
    settings.save_probabilities = save_probabilities
    settings.overlays = overlays
    return settings


def _predict_semantic(models: Sequence[LoadedModel], cases: Sequence[Case],
                      all_outputs: Sequence[CaseOutputs], settings: PredictSettings, device: torch.device,
                      workers: int, done: Callable[[], None]) -> list[Path]:
    """This rank's unfinished cases through the three stages (overlapped with ``workers`` threads)."""
    preprocessor = Preprocessor.from_dict(models[0].preprocessing)

    def read(item: tuple[Case, CaseOutputs]) -> ReadCase:
        return read_for_prediction(models, item[0], preprocessor, device)

    def infer(loaded: ReadCase) -> tuple[Tensor, bool]:
        return infer_scores(models, loaded, settings, device)

    def finish(item: tuple[Case, CaseOutputs], loaded: ReadCase, result: tuple[Tensor, bool]) -> Path:
        return finish_case(models, loaded, *result, item[1], settings, preprocessor)

    items = list(zip(cases, all_outputs, strict=True))
    return run_pipelined(items, read, infer, finish, workers, done=done)


def predict_paths(checkpoints: Sequence[str | Path], input: str | Path, output: str | Path, *,
                  tta: bool | None = None, step: float | None = None, save_probabilities: bool = False,
                  overlays: bool = True, postprocess: PostprocessOptions | None = None, device: str = "auto",
                  progress: bool = True, channels_suffix: bool | None = None,
                  instances_json: bool = False, workers: int = 0, overwrite: bool = False) -> list[Path]:
    """Predict a file or every case of a folder with one checkpoint or an ensemble; returns the masks of
    all the cases (on every rank: those written now, by other ranks and by earlier runs).

    An instance checkpoint (label mode ``instance``, Mask R-CNN) writes 16-bit instance label maps
    instead (:mod:`medseg.engine.predict_instances`; TTA, step and postprocessing do not apply).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the sorted cases are sharded across the ranks (case ``i`` to
    rank ``i % N``; :mod:`medseg.engine.predict_scale`), each rank writes its own, and the summary is logged
    by rank 0 after every rank is done. A case whose every output file exists is skipped unless
    ``overwrite`` (files are written atomically, so an existing file is complete).

    Args:
        checkpoints: checkpoint files (several: probabilities averaged).
        input: an image file or a folder of images (nnU-Net ``_0000`` channel files grouped).
        output: a folder, or a file path (with an image extension) when ``input`` is a file.
        tta: mirroring test-time augmentation (None: the checkpoint's setting).
        step: sliding-window step as a fraction of the patch (None: the checkpoint's, 0.5).
        save_probabilities: also write ``{case}_probabilities.npz`` (2D) / ``.nii.gz`` (3D).
        overlays: write ``overlays/{case}.png`` (image + predicted contours) for 2D cases.
        postprocess: postprocessing options (None: the checkpoint's).
        device: ``auto``, ``cpu`` or ``cuda`` (under ``torchrun``: each rank's local GPU).
        progress: a tqdm bar over the cases (rank 0).
        channels_suffix: group ``{case}_{XXXX}`` channel files into one case (see :func:`find_cases`;
            ``None``: the checkpoint's ``data.channels_suffix``, else only in an nnU-Net layout folder).
        instances_json: instance checkpoints: also write ``{case}_instances.json`` (scores, labels, boxes).
        workers: threads reading and preprocessing ahead of the network, with a writer thread behind it
            (0: one case after the other; the files are the same).
        overwrite: predict finished cases again instead of skipping them.
    """
    workers = check_workers(workers)
    torch_device = resolve_device(device, key="--device")
    joined_here = not torch.distributed.is_initialized()  # a caller's own process group is left to it
    ctx = init_distributed(torch_device.type)
    try:
        masks = _predict_paths(checkpoints, Path(input), Path(output), ctx,
                               rank_device(torch_device, ctx, device), tta=tta, step=step,
                               save_probabilities=save_probabilities, overlays=overlays,
                               postprocess=postprocess, progress=progress, channels_suffix=channels_suffix,
                               instances_json=instances_json, workers=workers, overwrite=overwrite)
    except BaseException:
        if joined_here:
            abort_distributed(ctx)
        raise
    if joined_here:
        shutdown_distributed(ctx)
    else:
        barrier(ctx)
    return masks


def _predict_paths(checkpoints: Sequence[str | Path], input_path: Path, output_path: Path,
                   ctx: DistributedContext, torch_device: torch.device, *, tta: bool | None,
                   step: float | None, save_probabilities: bool, overlays: bool,
                   postprocess: PostprocessOptions | None, progress: bool, channels_suffix: bool | None,
                   instances_json: bool, workers: int, overwrite: bool) -> list[Path]:
    models = load_models(checkpoints, torch_device)
    settings = _settings(models, tta, step, postprocess, save_probabilities, overlays)
    if channels_suffix is None:
        channels_suffix = models[0].channels_suffix
    cases = find_cases(input_path, models[0].image_channels, channels_suffix)
    single_file = input_path.is_file() and image_extension(output_path) is not None
    folder = output_path.parent if single_file else output_path
    source_folder = input_path.parent if input_path.is_file() else input_path
    if (folder.resolve() == source_folder.resolve() and not single_file) or (
            single_file and lossless_mask_path(output_path).resolve() == input_path.resolve()):
        raise MedsegError(f"output {output_path} is the input {input_path}; predictions would overwrite "
                          "the images")
    single_mask = lossless_mask_path(output_path) if single_file else None
    instance = models[0].label_mode == "instance"
    if instance:
        from medseg.engine.predict_instances import instance_outputs

        if workers:
            raise MedsegError("--workers: instance checkpoints predict one case after the other (use 0)")
        paths = [instance_outputs(c, folder, single_mask, instances_json, overlays) for c in cases]
    elif instances_json:
        raise MedsegError("--instances-json: needs an instance checkpoint (e.g. Mask R-CNN); for a semantic "
                          "model's watershed instances the map itself is the output")
    else:
        outputs = [_outputs_for(c, folder, models[0].spatial_dims, settings, single_mask) for c in cases]
        paths = [(o.mask, o.probabilities, o.overlay) for o in outputs]
    mine = shard(list(range(len(cases))), ctx.rank, ctx.world_size)
    pending = None  # the folder's new record, written when this rank's first case is finished
    if single_file:  # one named output file is always predicted
        overwrite = True
    else:  # a folder keeps only the predictions of the checkpoints and settings of its record
        record = run_record(checkpoints, {"settings": asdict(settings), "instances_json": instances_json,
                                          "channels_suffix": channels_suffix})
        if not same_run(folder, record):
            pending = record
            if not overwrite and ctx.is_main and any(case_is_finished(p) for p in paths):
                logger.warning("%s holds predictions of other checkpoints or settings: predicting every "
                               "case again", folder)
            overwrite = True
        barrier(ctx)  # every rank has read the old record before any rank writes the new one
    todo = [i for i in mine if overwrite or not case_is_finished(paths[i])]
    for i in sorted(set(mine) - set(todo)):  # a finished case keeps its files; a killed write's leftovers go
        for path in paths[i]:
            if path is not None:
                remove_stale_temporaries_of(path)
    bar = tqdm(total=len(todo), desc="predict", unit="case",
               disable=not progress or not ctx.is_main or len(todo) < 2)

    def done(n: int = 1) -> None:
        nonlocal pending
        if pending is not None:  # after a case's files: a bad first input writes nothing
            write_run_record(folder, pending)
            pending = None
        bar.update(n)

    with bar:
        if instance:
            from medseg.engine.predict_instances import predict_instance_cases

            predict_instance_cases(models, [cases[i] for i in todo], folder, single_mask,
                                   instances_json=instances_json, overlays=overlays, device=torch_device,
                                   progress=False, done=done)
        else:
            _predict_semantic(models, [cases[i] for i in todo], [outputs[i] for i in todo], settings,
                              torch_device, workers, done)
    counts = all_reduce_sum(torch.tensor([len(todo), len(mine) - len(todo)], dtype=torch.float64), ctx)
    if ctx.is_main:  # after every rank's share (the reduction waits for all of them)
        logger.info("predicted %d cases into %s (%d already finished, skipped; %d process(es))",
                    int(counts[0]), folder, int(counts[1]), ctx.world_size)
    return [p[0] for p in paths]
