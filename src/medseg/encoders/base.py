"""The encoder contract, the encoder registry and local weight loading.

An :class:`Encoder` maps an image to a list of feature maps, finest first and coarsest last, and says
their ``channels`` and ``reductions`` (input size / feature size). Its state-dict keys follow timm's
names for the same network, so a weight file saved from timm (or converted by the encoder's
:meth:`Encoder.convert_state_dict` from the original repository's layout) loads with
:func:`load_encoder_weights`. Nothing is ever downloaded: weights come from a file the user names.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medseg.errors import MedsegError
from medseg.registries import Registry

CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.", "pre_logits.", "last_linear.", "head_drop.")
"""Keys of classification heads: present in ImageNet weight files, never part of an encoder."""


class Encoder(nn.Module):
    """A multi-level feature extractor.

    Subclasses set ``spatial_dims``, ``channels`` (per returned level) and ``reductions`` (the input
    extent divided by the level's extent, e.g. ``[2, 4, 8, 16, 32]`` for a ResNet), and
    ``first_conv`` (the state-dict key of the stem's first convolution weight, adapted to
    ``in_channels`` when weights are loaded), and ``new_layers`` when they add layers that weight files
    do not have. ``forward(x)`` returns ``len(channels)`` maps.
    """

    spatial_dims: int = 2
    channels: list[int]
    reductions: list[int]
    first_conv: str | None = None
    new_layers: tuple[str, ...] = ()
    """State-dict key prefixes of layers that pretrained files do not have (added by a model around a
    standard network): their keys may be missing from a weight file."""
    __jit_ignored_attributes__ = ["first_conv", "new_layers"]

    @property
    def input_multiple(self) -> int:
        """Spatial input sizes must be multiples of this (the coarsest level's reduction)."""
        return max(self.reductions)

    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map another key layout (e.g. the original repository's) to ours; default: unchanged."""
        return state


# ------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class EncoderEntry:
    """What the registry knows about one encoder."""

    name: str
    builder: Callable[..., Encoder]
    paper: str
    dims: tuple[int, ...]
    params: int | None = None
    timm_name: str | None = None
    aliases: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)


def _import_encoders() -> None:
    import medseg.encoders  # noqa: F401  (registers the built-in encoders)


_ENCODERS: Registry[EncoderEntry] = Registry("encoder", populate=_import_encoders, error=MedsegError)


def register_encoder(name: str, *, paper: str, dims: Sequence[int] = (2,), params: int | None = None,
                     timm_name: str | None = None, aliases: Sequence[str] = (),
                     defaults: dict[str, Any] | None = None) -> Callable[[Callable[..., Encoder]],
                                                                        Callable[..., Encoder]]:
    """Decorator registering an encoder builder, called as ``builder(in_channels=, spatial_dims=,
    **options)``. ``params`` is the reference parameter count (3 input channels, no classifier);
    ``timm_name`` the timm model whose weight files load into it."""

    def decorate(builder: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _ENCODERS.add(name, EncoderEntry(name, builder, paper, tuple(dims), params, timm_name, tuple(aliases),
                                         dict(defaults or {})), aliases)
        return builder

    return decorate


def get_encoder_entry(name: str) -> EncoderEntry:
    """The entry of ``name`` or an alias; unknown names suggest the closest registered ones."""
    return _ENCODERS.get(name)


def list_encoders() -> list[str]:
    """The registered encoder names, sorted (aliases not included)."""
    return _ENCODERS.names()


def encoder_info(name: str) -> dict[str, Any]:
    """Metadata of an encoder: paper, dims, reference parameter count, timm name, aliases."""
    entry = get_encoder_entry(name)
    return {"name": entry.name, "paper": entry.paper, "dims": list(entry.dims), "params": entry.params,
            "timm_name": entry.timm_name, "aliases": list(entry.aliases)}


def create_encoder(name: str, *, in_channels: int = 3, spatial_dims: int = 2,
                   weights: str | Path | None = None, **options: Any) -> Encoder:
    """Build a registered encoder; ``weights`` loads a local ``.pth``/``.pt``/``.safetensors`` file."""
    entry = get_encoder_entry(name)
    if spatial_dims not in entry.dims:
        supported = " or ".join(str(d) for d in entry.dims)
        raise MedsegError(f"encoder {entry.name!r} supports spatial_dims {supported}, got {spatial_dims!r}")
    if in_channels < 1:
        raise MedsegError(f"in_channels must be >= 1, got {in_channels}")
    try:
        encoder = entry.builder(in_channels=in_channels, spatial_dims=spatial_dims,
                                **{**entry.defaults, **options})
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise MedsegError(f"encoder {entry.name!r}: {exc}") from None
        raise
    if weights is not None:
        load_encoder_weights(encoder, weights)
    return encoder


def for_dims(value: Any, spatial_dims: int) -> Any:
    """``value`` itself, or its entry for ``spatial_dims`` when it is a mapping keyed by dims
    (``{2: ..., 3: ...}``; YAML's ``"2"``/``"3"`` keys work too)."""
    if isinstance(value, Mapping) and value and all(str(k) in ("2", "3") for k in value):
        picked = {str(k): v for k, v in value.items()}
        if str(spatial_dims) not in picked:
            raise MedsegError(f"no entry for spatial_dims {spatial_dims} in {dict(value)}")
        return picked[str(spatial_dims)]
    return value


def build_encoder(encoder: str | Encoder | Mapping[Any, Any] | None, *, in_channels: int, spatial_dims: int,
                  weights: str | Path | None = None, options: Mapping[str, Any] | None = None,
                  default: Mapping[int, str] | None = None) -> Encoder:
    """The encoder of a model: a registered name (built with ``options`` and ``weights``) or a ready
    :class:`Encoder` instance (checked against ``spatial_dims``). Models call this for their ``encoder``
    option so that every model takes the same ``encoder`` / ``encoder_options`` / ``encoder_weights``.

    ``encoder`` and ``options`` may be keyed by dims (:func:`for_dims`), so one set of options serves a
    model's 2D and 3D forms; ``encoder=None`` takes the model's ``default`` name for ``spatial_dims``."""
    if encoder is None:
        if default is None or spatial_dims not in default:
            raise MedsegError(f"no encoder given and no default encoder for spatial_dims {spatial_dims}")
        encoder = default[spatial_dims]
    encoder = for_dims(encoder, spatial_dims)
    options = for_dims(options, spatial_dims)
    if isinstance(encoder, Encoder):
        if options:
            raise MedsegError("encoder_options apply to an encoder given by name, not to an instance")
        if encoder.spatial_dims != spatial_dims:
            raise MedsegError(f"the encoder is {encoder.spatial_dims}D but the model is {spatial_dims}D")
        if weights is not None:
            load_encoder_weights(encoder, weights)
        return encoder
    if not isinstance(encoder, str):
        raise MedsegError(f"encoder must be a registered name or an Encoder, got {type(encoder).__name__}")
    return create_encoder(encoder, in_channels=in_channels, spatial_dims=spatial_dims, weights=weights,
                          **dict(options or {}))


# ------------------------------------------------------------------------------------------ weight files

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file (8-byte little-endian header length, JSON header, raw data) without
    the ``safetensors`` package; BF16 tensors are widened through their 16 raw bits."""
    path = Path(path)
    data = path.read_bytes()
    try:
        (header_size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + header_size])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise MedsegError(f"{path}: not a safetensors file ({exc})") from None
    base = 8 + header_size
    tensors: dict[str, Tensor] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if dtype != "BF16" and dtype not in _SAFETENSORS_DTYPES:
            raise MedsegError(f"{path}: tensor {key!r} has unsupported dtype {dtype}")
        try:
            start, end = info["data_offsets"]
            raw = data[base + start:base + end]
            if len(raw) != end - start:
                raise ValueError("the file ends before the tensor's data")
            if dtype == "BF16":
                array = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                array = np.frombuffer(raw, dtype=_SAFETENSORS_DTYPES[dtype])
            tensors[key] = torch.from_numpy(array.copy()).reshape(info["shape"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise MedsegError(f"{path}: tensor {key!r} is malformed ({exc})") from None
    return tensors


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A flat ``{key: tensor}`` from a weight file: safetensors, or a torch file read with
    ``weights_only=True`` (never unpickling code); ``state_dict``/``model`` wrappers and a ``module.``
    prefix (DataParallel) are removed."""
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        state: Any = read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001  (any unreadable file becomes one clear line)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MedsegError(f"{path}: cannot read weights ({first})") from None
    for wrapper in ("state_dict", "model", "model_state", "net"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MedsegError(f"{path}: expected a mapping of tensor names to tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """A first-conv weight ``[out, c, *k]`` made to take ``in_channels``: summed over ``c`` for one
    channel, else repeated cyclically and rescaled by ``c / in_channels`` (so the response to an image
    whose channels are equal keeps its scale)."""
    channels = weight.shape[1]
    if in_channels == channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // channels)
    return weight.repeat(1, repeats, *[1] * (weight.dim() - 2))[:, :in_channels] * (channels / in_channels)


@dataclass
class LoadReport:
    """What :func:`load_encoder_weights` did."""

    loaded: int
    classifier: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    adapted: list[str]


def _preview(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_encoder_weights(encoder: Encoder, path: str | Path, *, strict: bool = True) -> LoadReport:
    """Load a local weight file into ``encoder``.

    Classification-head keys (:data:`CLASSIFIER_PREFIXES`) are ignored; the first conv is adapted to
    the encoder's input channels (:func:`adapt_input_conv`). With ``strict`` any other missing or
    unexpected key, or any other shape mismatch, raises one :class:`MedsegError` naming the file and
    the keys; without it, what matches is loaded and the rest reported in the returned
    :class:`LoadReport`.
    """
    state = encoder.convert_state_dict(read_state_dict(path))
    own = encoder.state_dict()
    ignored = [k for k in state if k not in own and k.startswith(CLASSIFIER_PREFIXES)]
    unexpected = [k for k in state if k not in own and k not in ignored]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")
               and not k.startswith(tuple(encoder.new_layers))]
    adapted: list[str] = []
    mismatched: list[str] = []
    usable: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape != target.shape and key == encoder.first_conv and value.dim() == target.dim() \
                and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            value = adapt_input_conv(value, target.shape[1])
            adapted.append(key)
        if value.shape != target.shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target.shape)}")
            continue
        usable[key] = value.to(target.dtype)
    if strict and (missing or unexpected or mismatched):
        problems = []
        if missing:
            problems.append(f"{len(missing)} keys missing ({_preview(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_preview(unexpected)})")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches ({_preview(mismatched)})")
        raise MedsegError(f"{path}: does not fit encoder {type(encoder).__name__}: {'; '.join(problems)}")
    encoder.load_state_dict(usable, strict=False)
    return LoadReport(len(usable), ignored, missing, unexpected, mismatched, adapted)


def build_atrous_encoder(encoder: str | Encoder | Mapping[Any, Any] | None,
                         encoder_options: Mapping[Any, Any] | None, encoder_weights: str | Path | None,
                         in_channels: int, spatial_dims: int, output_stride: int,
                         default: Mapping[int, str]) -> Encoder:
    """The atrous encoder of a model at ``output_stride`` (DeepLab, PSPNet, PAN): a named encoder gets
    ``output_stride`` (its last strides turned into dilation), an instance must already have it; the
    coarsest reduction is checked either way."""
    options = dict(for_dims(encoder_options, spatial_dims) or {})
    if not isinstance(for_dims(encoder, spatial_dims), Encoder):
        options.setdefault("output_stride", output_stride)
    built = build_encoder(encoder, in_channels=in_channels, spatial_dims=spatial_dims,
                          weights=encoder_weights, options=options, default=default)
    if max(built.reductions) != output_stride:
        raise MedsegError(f"the encoder's output stride is {max(built.reductions)}, the model's "
                          f"output_stride is {output_stride}")
    return built
