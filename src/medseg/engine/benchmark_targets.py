"""What ``medseg benchmark`` can measure: registry models (or aliases, ``MODEL+pointrend`` for the
PointRend wrap) and peers from other libraries (``monai:basicunet``, ...; MONAI is imported only when such
a name is asked for)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from medseg.errors import InputSizeError, MedsegError
from medseg.models.base import nearest_multiples
from medseg.models.pointrend import wrap_pointrend
from medseg.models.registry import alias_defaults, create_model, get_entry


@dataclass(frozen=True)
class BenchmarkTarget:
    """A model that can be built by name: its supported dims, its input multiple and its builder.

    ``build(in_channels=..., num_classes=..., spatial_dims=..., **options)`` returns the module.
    """

    name: str
    dims: tuple[int, ...]
    input_multiple: int
    build: Callable[..., nn.Module]


def _monai_networks() -> Any:
    try:
        from monai.networks import nets
    except ImportError as exc:
        raise MedsegError("peer models 'monai:...' need MONAI installed (pip install monai)") from exc
    return nets


def _monai_basicunet(in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> nn.Module:
    return _monai_networks().BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels,
                                       out_channels=num_classes, **options)


def _monai_unet(in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> nn.Module:
    settings = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2, **options}
    return _monai_networks().UNet(spatial_dims=spatial_dims, in_channels=in_channels,
                                  out_channels=num_classes, **settings)


def _monai_vnet(in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> nn.Module:
    return _monai_networks().VNet(spatial_dims=spatial_dims, in_channels=in_channels,
                                  out_channels=num_classes, **options)


PEERS: dict[str, BenchmarkTarget] = {
    "monai:basicunet": BenchmarkTarget("monai:basicunet", (2, 3), 16, _monai_basicunet),
    "monai:unet": BenchmarkTarget("monai:unet", (2, 3), 16, _monai_unet),
    "monai:vnet": BenchmarkTarget("monai:vnet", (2, 3), 16, _monai_vnet),
}


#: ``MODEL+pointrend`` benchmarks the model wrapped by :func:`~medseg.models.pointrend.wrap_pointrend`.
POINTREND_SUFFIX = "pointrend"


def resolve_target(name: str) -> BenchmarkTarget:
    """A registry model (or alias), the same with ``+pointrend`` (wrapped with the PointRend head at its
    default options), or a peer such as ``monai:basicunet``; unknown names raise.

    An alias that implies the dims (``unet3d``) restricts the target to those dims.
    """
    key = name.lower()
    if ":" in key:
        if key not in PEERS:
            raise MedsegError(f"unknown peer model {name!r}; known peers: {', '.join(PEERS)}")
        return PEERS[key]
    key, plus, extra = key.partition("+")
    if plus and extra != POINTREND_SUFFIX:
        raise MedsegError(f"model {name!r}: the only suffix is '+{POINTREND_SUFFIX}' (the PointRend wrap)")
    entry = get_entry(key)
    implied = alias_defaults(key).get("spatial_dims")
    dims = (implied,) if implied in entry.dims else entry.dims

    def build(**kwargs: Any) -> nn.Module:
        model = create_model(key, **kwargs)
        if plus:  # eval mode: adaptive subdivision up to the input size
            model = wrap_pointrend(model, {}, num_classes=kwargs.get("num_classes"))
        return model

    label = f"{entry.name}+{POINTREND_SUFFIX}" if plus else entry.name
    return BenchmarkTarget(label, tuple(dims), entry.input_multiple, build)


def check_size(target: BenchmarkTarget, size: int) -> None:
    """Raise :class:`InputSizeError` naming the sizes that work when ``size`` is not a valid extent."""
    m = target.input_multiple
    if size >= m and size % m == 0:
        return
    lower, upper = nearest_multiples(size, m)
    nearest = f"{lower}" if lower == upper else f"{lower} or {upper}"
    raise InputSizeError(f"model {target.name!r} cannot take size {size}: sizes must be multiples of {m} "
                         f"(nearest: {nearest})")


def check_dims(target: BenchmarkTarget, spatial_dims: int) -> None:
    """Raise :class:`MedsegError` when ``target`` does not support ``spatial_dims``."""
    if spatial_dims not in target.dims:
        supported = " or ".join(str(d) for d in target.dims)
        raise MedsegError(f"model {target.name!r} supports spatial_dims {supported}, not {spatial_dims}")


# ----------------------------------------------------------------------------------------------------
# The measurements
