"""Fully connected CRF with mean-field inference (Krähenbühl & Koltun 2011), the post-processing of
DeepLab V1/V2 (Chen et al. 2015, Sec. 4; 2017, Sec. 3.3), written in PyTorch for 2D and 3D.

Energy of a labelling x: ``E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j)`` with unaries
``U = -log softmax(logits)``, Potts compatibility ``mu(l, l') = [l != l']`` and the two kernels of
Eq. 3: an appearance (bilateral) kernel ``w1 exp(-|p_i-p_j|^2 / 2 theta_a^2 - |I_i-I_j|^2 / 2 theta_b^2)``
and a smoothness kernel ``w2 exp(-|p_i-p_j|^2 / 2 theta_g^2)`` (positions in pixels, intensities in the
units of the image given). Mean field (Sec. 3, Algorithm 1) iterates
``Q_i(l) ∝ exp(-U_i(l) - sum_{l'} mu(l, l') sum_{j != i} k_ij Q_j(l'))``, which for Potts is
``softmax(logits + sum_{j != i} k_ij Q_j)``.

Two ways to compute the message ``sum_{j != i} k_ij Q_j``:

* ``exact``: the full ``N x N`` kernel over every pixel pair (memory ``N^2``): the true fully connected
  CRF, for small images (``max_exact_pixels``).
* ``window``: an *approximation* for larger images: only pairs within a ``(2 window + 1)^d`` neighbourhood
  (on a grid down-sampled by ``downsample``, whose cells stand for ``downsample^d`` pixels; the message is
  up-sampled back) contribute. It is not the permutohedral lattice of the paper: long-range bilateral
  terms beyond the window are dropped. The window's kernels are computed once per image
  (``(2 window + 1)^d - 1`` maps of the grid's size: keep ``window`` small in 3D).

Defaults are DeepLab v2's ResNet-101 settings (``bi_w=4, bi_xy_std=67, bi_rgb_std=3, pos_w=3,
pos_xy_std=1``, 10 iterations) with the colour std written for images in ``[0, 1]`` (3/255), the scale of
medseg's ``rgb`` normalisation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg import layers
from medseg.errors import MedsegError

METHODS = ("auto", "exact", "window")


class DenseCRF(nn.Module):
    """Mean-field inference in a fully connected CRF with Gaussian kernels and Potts compatibility.

    ``forward(logits, image)`` takes logits ``[B, C, *spatial]`` (C = 1: a sigmoid's logit, treated as the
    two classes ``[0, z]``) and the image ``[B, K, *spatial]`` at the same size, and returns refined logits
    of the same shape: ``log Q`` (C > 1) or ``log Q_1 - log Q_0`` (C = 1), so that softmax / sigmoid of
    the output gives the mean-field marginals.

    Args:
        iterations: mean-field iterations.
        appearance_weight, appearance_theta, intensity_theta: ``w1``, ``theta_alpha`` (pixels) and
            ``theta_beta`` (image units) of the bilateral kernel.
        smoothness_weight, smoothness_theta: ``w2`` and ``theta_gamma`` (pixels) of the smoothness kernel.
        method: ``exact``, ``window`` or ``auto`` (exact up to ``max_exact_pixels`` pixels per image).
        max_exact_pixels: the largest image (pixels or voxels) that ``auto`` solves exactly.
        window: neighbourhood radius of the ``window`` approximation, in (down-sampled) grid cells.
        downsample: grid down-sampling factor of the ``window`` approximation (1: full resolution).
    """

    def __init__(self, iterations: int = 10, appearance_weight: float = 4.0, appearance_theta: float = 67.0,
                 intensity_theta: float = 3.0 / 255.0, smoothness_weight: float = 3.0,
                 smoothness_theta: float = 1.0, method: str = "auto", max_exact_pixels: int = 4096,
                 window: int = 5, downsample: int = 1) -> None:
        super().__init__()
        if iterations < 0:
            raise MedsegError(f"CRF iterations must be >= 0, got {iterations}")
        if min(appearance_theta, intensity_theta, smoothness_theta) <= 0:
            raise MedsegError("CRF kernel widths (appearance_theta, intensity_theta, smoothness_theta) "
                              "must be > 0")
        if appearance_weight < 0 or smoothness_weight < 0:
            raise MedsegError("CRF kernel weights must be >= 0")
        if method not in METHODS:
            raise MedsegError(f"unknown CRF method {method!r}; choose one of {', '.join(METHODS)}")
        if window < 1 or downsample < 1 or max_exact_pixels < 1:
            raise MedsegError("CRF window, downsample and max_exact_pixels must be >= 1")
        self.iterations = int(iterations)
        self.appearance_weight = float(appearance_weight)
        self.appearance_theta = float(appearance_theta)
        self.intensity_theta = float(intensity_theta)
        self.smoothness_weight = float(smoothness_weight)
        self.smoothness_theta = float(smoothness_theta)
        self.method = method
        self.max_exact_pixels = int(max_exact_pixels)
        self.window = int(window)
        self.downsample = int(downsample)

    # ------------------------------------------------------------------ kernels and messages

    def _check(self, logits: Tensor, image: Tensor) -> None:
        if logits.dim() not in (4, 5) or image.dim() != logits.dim():
            raise MedsegError(f"DenseCRF expects logits and image [B, C, *spatial] of the same rank, got "
                              f"{tuple(logits.shape)} and {tuple(image.shape)}")
        if logits.shape[0] != image.shape[0] or logits.shape[2:] != image.shape[2:]:
            raise MedsegError(f"DenseCRF: logits {tuple(logits.shape)} and image {tuple(image.shape)} differ "
                              "in batch or spatial size")

    def _resolve(self, spatial: torch.Size) -> str:
        if self.method != "auto":
            return self.method
        return "exact" if spatial.numel() <= self.max_exact_pixels else "window"

    def pairwise_kernel(self, image: Tensor) -> Tensor:
        """The full kernel ``k_ij`` ``[B, N, N]`` (diagonal zero) over all pixel pairs of ``image``."""
        spatial = image.shape[2:]
        grids = torch.meshgrid(*[torch.arange(s, dtype=image.dtype, device=image.device) for s in spatial],
                               indexing="ij")
        positions = torch.stack([g.reshape(-1) for g in grids], dim=1)  # [N, d]
        distance = torch.cdist(positions, positions).pow(2)  # [N, N]
        colours = image.flatten(2).transpose(1, 2)  # [B, N, K]
        colour_distance = torch.cdist(colours, colours).pow(2)  # [B, N, N]
        kernel = self.appearance_weight * torch.exp(-distance / (2 * self.appearance_theta ** 2)
                                                    - colour_distance / (2 * self.intensity_theta ** 2))
        kernel = kernel + self.smoothness_weight * torch.exp(-distance / (2 * self.smoothness_theta ** 2))
        return kernel * (1 - torch.eye(kernel.shape[-1], dtype=kernel.dtype, device=kernel.device))

    def _grid(self, x: Tensor) -> Tensor:
        """``x`` on the window path's grid (average-pooled by ``downsample``)."""
        if self.downsample == 1:
            return x
        pool = layers.avg_pool(x.dim() - 2, self.downsample, self.downsample, count_include_pad=False)
        pool.ceil_mode = True
        return pool(x)

    def _offsets(self, dims: int) -> list[tuple[int, ...]]:
        return [o for o in itertools.product(range(-self.window, self.window + 1), repeat=dims) if any(o)]

    def _shift(self, x: Tensor, offset: tuple[int, ...]) -> Tensor:
        """``x`` at position ``i + offset`` for every ``i`` (zero beyond the border: no contribution)."""
        r = self.window
        padded = F.pad(x, [r] * (2 * (x.dim() - 2)))
        index = [slice(None), slice(None)] + [slice(r + o, r + o + s)
                                              for o, s in zip(offset, x.shape[2:], strict=True)]
        return padded[tuple(index)]

    def window_kernels(self, image: Tensor) -> list[Tensor]:
        """The truncated-window kernel ``k(i, i + o)`` ``[B, 1, *grid]`` for each offset ``o`` of the
        window (computed once per image; ``(2 window + 1)^d - 1`` maps)."""
        grid = self._grid(image)
        kernels = []
        for offset in self._offsets(image.dim() - 2):
            distance = float(sum((o * self.downsample) ** 2 for o in offset))
            colour = (grid - self._shift(grid, offset)).pow(2).sum(dim=1, keepdim=True)
            kernel = self.appearance_weight * torch.exp(-distance / (2 * self.appearance_theta ** 2)
                                                        - colour / (2 * self.intensity_theta ** 2))
            smoothness = self.smoothness_weight * math.exp(-distance / (2 * self.smoothness_theta ** 2))
            kernels.append(kernel + smoothness)
        return kernels

    def _window_message(self, q: Tensor, kernels: list[Tensor]) -> Tensor:
        """The truncated-window approximation of ``sum_{j != i} k_ij Q_j``."""
        q_grid = self._grid(q)
        message = torch.zeros_like(q_grid)
        for offset, kernel in zip(self._offsets(q.dim() - 2), kernels, strict=True):
            message = message + kernel * self._shift(q_grid, offset)
        if self.downsample > 1:
            message = layers.resize_to(message * self.downsample ** (q.dim() - 2), list(q.shape[2:]))
        return message

    def kernels(self, image: Tensor) -> Tensor | list[Tensor]:
        """What :meth:`message` needs for ``image``: the exact kernel or the window's kernels."""
        if self._resolve(image.shape[2:]) == "window":
            return self.window_kernels(image)
        return self.pairwise_kernel(image)

    def message(self, q: Tensor, image: Tensor, kernel: Tensor | list[Tensor] | None = None) -> Tensor:
        """``sum_{j != i} k_ij Q_j(l)`` for every pixel and label (``kernel``: from :meth:`kernels`)."""
        if kernel is None:
            kernel = self.kernels(image)
        if isinstance(kernel, list):
            return self._window_message(q, kernel)
        flat = q.flatten(2)  # [B, L, N]
        return torch.bmm(flat, kernel.transpose(1, 2)).reshape(q.shape)

    # ------------------------------------------------------------------ inference and energy

    @staticmethod
    def _as_classes(logits: Tensor) -> Tensor:
        """Two-class logits ``[0, z]`` for a single sigmoid channel, else the logits themselves."""
        return torch.cat([torch.zeros_like(logits), logits], dim=1) if logits.shape[1] == 1 else logits

    def mean_field(self, logits: Tensor, image: Tensor) -> Tensor:
        """The marginals ``Q`` ``[B, L, *spatial]`` after ``iterations`` parallel mean-field updates,
        starting from ``softmax(logits)`` (L = 2 for a single sigmoid channel)."""
        self._check(logits, image)
        scores = self._as_classes(logits).float()
        image = image.float()
        kernel = self.kernels(image)
        q = torch.softmax(scores, dim=1)
        for _ in range(self.iterations):
            # Potts: -sum_{l' != l} M(l') = M(l) - sum_l' M(l'); the second term is the same for every l.
            q = torch.softmax(scores + self.message(q, image, kernel), dim=1)
        return q

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        q = self.mean_field(logits, image).clamp_min(torch.finfo(torch.float32).tiny).log()
        out = q[:, 1:2] - q[:, 0:1] if logits.shape[1] == 1 else q
        return out.to(logits.dtype)

    def free_energy(self, logits: Tensor, image: Tensor, q: Tensor) -> Tensor:
        """The mean-field free energy ``E_Q[E] - H(Q)`` (the KL to the CRF's distribution up to log Z) of
        marginals ``q`` per image ``[B]``, with the exact kernel; mean field lowers it."""
        return self.expected_energy(logits, image, q) - _entropy(q)

    def expected_energy(self, logits: Tensor, image: Tensor, q: Tensor) -> Tensor:
        """The expected energy per image ``[B]`` (exact kernel, so for small images):
        ``E_Q[E] = sum_i sum_l Q_i(l) U_i(l) + 1/2 sum_i sum_{j != i} k_ij sum_{l != l'} Q_i(l) Q_j(l')``."""
        self._check(logits, image)
        unary = -torch.log_softmax(self._as_classes(logits).float(), dim=1)
        q = q.float()
        message = self.message(q, image.float(), self.pairwise_kernel(image.float()))
        total = message.sum(dim=1, keepdim=True)  # sum_j k_ij (sum_l' Q_j(l') = 1)
        pairwise = 0.5 * (q * (total - message)).flatten(1).sum(1)
        return (q * unary).flatten(1).sum(1) + pairwise


def _entropy(q: Tensor) -> Tensor:
    return -(q * q.clamp_min(torch.finfo(q.dtype).tiny).log()).flatten(1).sum(1)


def build_crf(option: bool | Mapping[str, Any] | DenseCRF | None) -> DenseCRF | None:
    """A model's ``crf`` option: None/False (no CRF), True (the defaults), a mapping of
    :class:`DenseCRF` keywords (``{iterations: 5, ...}``) or a ready instance."""
    if option is None or option is False:
        return None
    if option is True:
        return DenseCRF()
    if isinstance(option, DenseCRF):
        return option
    if not isinstance(option, Mapping):
        raise MedsegError(f"crf must be true/false or a mapping of DenseCRF options, got {option!r}")
    try:
        return DenseCRF(**dict(option))
    except TypeError as exc:
        raise MedsegError(f"crf: {exc}".replace("DenseCRF.__init__() ", "")) from None
