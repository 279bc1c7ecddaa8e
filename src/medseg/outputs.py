"""Model output containers shared by models and losses (a leaf module: imports only torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class SegOutput:
    """Training-mode output of a model with auxiliary outputs.

    Args:
        logits: the main prediction ``[B, num_classes, *spatial]`` at the input size.
        aux: auxiliary logits, e.g. deep-supervision maps, ordered from the finest to the coarsest.
        extras: named extra tensors (ConResNet residual maps, PointRend point logits, ...).
    """

    logits: Tensor
    aux: list[Tensor] = field(default_factory=list)
    extras: dict[str, Tensor] = field(default_factory=dict)


def main_logits(output: Tensor | SegOutput) -> Tensor:
    """The main logits of a plain Tensor or a :class:`SegOutput`."""
    return output.logits if isinstance(output, SegOutput) else output
