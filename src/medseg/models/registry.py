"""The model registry: names, builders and metadata (paper, dims, default loss, input multiple, references).

Models register themselves with :func:`register_model`; users create them with
:func:`create_model` and inspect them with :func:`list_models` and :func:`model_info`. The entries live in a
:class:`~medseg.registries.Registry`, filled by importing :mod:`medseg.models` (the zoo) on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from medseg.errors import MedsegError, UnknownModelError
from medseg.registries import Registry


@dataclass(frozen=True)
class Reference:
    """A reference configuration of a spec: ``create_model`` options and the expected parameter count."""

    options: dict[str, Any]
    params: int
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"options": dict(self.options), "params": self.params, "source": self.source}


@dataclass(frozen=True)
class ModelEntry:
    """Everything the registry knows about one model."""

    name: str
    builder: Callable[..., nn.Module]
    paper: str
    dims: tuple[int, ...]
    default_loss: str
    input_multiple: int
    references: tuple[Reference, ...] = ()
    aliases: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    small_options: dict[str, Any] = field(default_factory=dict)
    exportable: bool = True
    task: str = "semantic"
    """``semantic`` (the zoo's forward contract: logits at the input size) or ``instance`` (a detector
    with its own contract, e.g. Mask R-CNN: images and targets in, losses or detections out)."""


def _import_zoo() -> None:
    import medseg.models  # noqa: F401  (registers the zoo)


_MODELS: Registry[ModelEntry] = Registry("model", populate=_import_zoo, error=UnknownModelError)


def register_model(name: str, *, paper: str, dims: Sequence[int], default_loss: str, input_multiple: int,
                   references: Sequence[Reference] = (), aliases: Sequence[str] = (),
                   defaults: dict[str, Any] | None = None, small_options: dict[str, Any] | None = None,
                   exportable: bool = True, task: str = "semantic"
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class or function decorator that registers a model builder under ``name``.

    The builder is called as ``builder(in_channels=..., num_classes=..., spatial_dims=..., **options)``.
    ``defaults`` are option values used when the caller gives none. ``small_options`` build a small
    instance of the same topology (narrow widths) for the shared model test and quick demos.
    ``exportable`` says whether the eval-mode model can be exported (TorchScript or ``torch.export``).
    ``task`` is ``semantic`` (the shared forward contract) or ``instance`` (its own contract).
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS.add(name, ModelEntry(name, builder, paper, tuple(dims), default_loss, input_multiple,
                                    tuple(references), tuple(aliases), dict(defaults or {}),
                                    dict(small_options or {}), exportable, task), aliases)
        return builder

    return decorate


def unregister_model(name: str) -> None:
    """Remove a model and its aliases from the registry (tests, plug-ins); unknown names are ignored."""
    _MODELS.remove(name)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name`` or an alias; unknown names list the closest registered ones."""
    return _MODELS.get(name)


def alias_defaults(name: str) -> dict[str, Any]:
    """Options implied by an alias (``unet3d`` means ``unet`` with ``spatial_dims=3``)."""
    return {"spatial_dims": 3} if name.lower().endswith("3d") and _MODELS.is_alias(name) else {}


def create_model(name: str, *, in_channels: int = 1, num_classes: int = 1, spatial_dims: int | None = None,
                 **options: Any) -> nn.Module:
    """Build a registered model as a plain ``torch.nn.Module``.

    Args:
        name: registry name or alias (see :func:`list_models`).
        in_channels: image channels.
        num_classes: output channels (1 for binary, C with background for multiclass, C for multilabel).
        spatial_dims: 2 or 3 (default: 2, or what the alias implies).
        options: model-specific keyword arguments.
    """
    entry = get_entry(name)
    resolved = {**entry.defaults, **alias_defaults(name), **options}
    dims = spatial_dims if spatial_dims is not None else resolved.pop("spatial_dims", 2)
    resolved.pop("spatial_dims", None)
    if dims not in entry.dims:
        supported = " or ".join(str(d) for d in entry.dims)
        raise MedsegError(f"model {entry.name!r} supports spatial_dims {supported}, got {dims!r}")
    if in_channels < 1 or num_classes < 1:
        raise MedsegError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
    try:
        return entry.builder(in_channels=in_channels, num_classes=num_classes, spatial_dims=dims, **resolved)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise MedsegError(f"model {entry.name!r}: {exc}") from None
        raise


def list_models() -> list[str]:
    """The registered model names, sorted (aliases not included)."""
    return _MODELS.names()


def model_info(name: str) -> dict[str, Any]:
    """Metadata of a model: paper, dims, default loss, input multiple, aliases and reference counts."""
    entry = get_entry(name)
    return {
        "name": entry.name,
        "paper": entry.paper,
        "dims": list(entry.dims),
        "default_loss": entry.default_loss,
        "input_multiple": entry.input_multiple,
        "aliases": list(entry.aliases),
        "references": [r.as_dict() for r in entry.references],
        "small_options": dict(entry.small_options),
        "exportable": entry.exportable,
        "task": entry.task,
    }


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; buffers are never counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
