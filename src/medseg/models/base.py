"""The base class of the zoo's networks: input-size checks shared by every model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medseg.errors import InputSizeError


def nearest_multiples(size: int, multiple: int) -> tuple[int, int]:
    """The multiples of ``multiple`` (at least ``multiple``) nearest to ``size`` from below and above."""
    lower = max(multiple, size // multiple * multiple)
    upper = max(multiple, -(-size // multiple) * multiple)
    return lower, upper


class SegmentationModel(nn.Module):
    """A segmentation network whose spatial input sizes must be multiples of ``input_multiple``.

    Subclasses set ``self.input_multiple`` (and may override :meth:`valid_size` and
    :meth:`nearest_valid_sizes` when the rule is not a plain multiple, e.g. valid padding) and call
    :meth:`check_input` at the top of ``forward``.
    """

    input_multiple: int = 1
    # TorchScript cannot resolve class-level annotations under postponed evaluation; it needs none of these.
    __jit_ignored_attributes__ = ["input_multiple"]

    def valid_size(self, size: int) -> bool:
        """Whether one spatial extent can be processed."""
        return size >= self.input_multiple and size % self.input_multiple == 0

    def nearest_valid_sizes(self, size: int) -> tuple[int, int]:
        """The nearest processable sizes below and above ``size``."""
        return nearest_multiples(size, self.input_multiple)

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`InputSizeError` naming the sizes that work when ``x`` cannot be processed."""
        if torch.jit.is_scripting() or torch.compiler.is_compiling():
            return
        spatial_dims = getattr(self, "spatial_dims", x.dim() - 2)
        if x.dim() != spatial_dims + 2:
            raise InputSizeError(
                f"{type(self).__name__} expects a [B, C, {'D, ' if spatial_dims == 3 else ''}H, W] tensor, "
                f"got shape {tuple(x.shape)}")
        for extent in x.shape[2:]:
            if not self.valid_size(int(extent)):
                lower, upper = self.nearest_valid_sizes(int(extent))
                raise InputSizeError(
                    f"{type(self).__name__}: input size {tuple(x.shape[2:])} does not work; each spatial "
                    f"size must be {self.size_rule()} (nearest for {extent}: {lower} or {upper})")

    def size_rule(self) -> str:
        """Human-readable rule of the valid sizes."""
        return f"a multiple of {self.input_multiple}"


def smallest_valid_size(model: nn.Module, size: int) -> int:
    """The smallest extent >= ``size`` that ``model`` takes: a multiple of its ``input_multiple`` that its
    :meth:`SegmentationModel.valid_size` accepts (any multiple for other modules)."""
    multiple = int(getattr(model, "input_multiple", 1) or 1)
    check = getattr(model, "valid_size", None)
    size = -(-size // multiple) * multiple
    for _ in range(64):
        if (bool(check(size)) if callable(check) else size % multiple == 0):
            return size
        size += multiple
    return size
