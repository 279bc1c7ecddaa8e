"""The ``train.adversarial`` section of the run configuration (the adversarial training mode of
:mod:`medseg.engine.adversarial`, Luc et al. 2016)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from medseg.config_types import ConfigError, bounded


@dataclass
class DiscriminatorConfig:
    """``train.adversarial.discriminator``: ``luc`` (Luc et al.'s two-branch Stanford Background network)
    or ``concat`` (image and map concatenated), with ``options`` (``features`` 64, ``norm`` none, ``act``
    relu); see :mod:`medseg.models.discriminator`."""

    name: Literal["luc", "concat"] = "luc"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdversarialConfig:
    """``train.adversarial``: the adversarial term's ``weight`` (lambda), the first (0-based) epoch it is
    on (``start_epoch``), and the discriminator's optimiser (``adam`` with ``betas``, or ``sgd`` with
    ``momentum``), constant learning rate ``lr`` and ``weight_decay``."""

    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    weight: float = bounded(0.1, ge=0)
    start_epoch: int = bounded(0, ge=0)
    optimiser: Literal["adam", "sgd"] = "adam"
    lr: float = bounded(1e-4, gt=0)
    betas: tuple[float, float] = bounded((0.5, 0.999), ge=0, lt=1)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(0.0, ge=0)

    def check(self, key: str) -> None:
        unknown = set(self.discriminator.options) - {"features", "norm", "act"}
        if unknown:
            raise ConfigError(f"{key}.discriminator.options: unknown {sorted(unknown)} (features, norm, act)")
