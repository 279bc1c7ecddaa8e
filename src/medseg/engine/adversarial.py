"""Adversarial training for any segmentation model (``train.adversarial``), after Luc et al., "Semantic
Segmentation using Adversarial Networks" (NIPS Workshop on Adversarial Training, 2016).

A discriminator D (:mod:`medseg.models.discriminator`) sees (image, probability map) pairs: the ground
truth as a one-hot / multi-hot map (real) or the segmenter's map S(x) (fake), the sigmoid of the logits for
binary and multilabel runs, their softmax for multiclass runs. Per training batch, from epoch
``start_epoch`` on (0-based: that many epochs train the segmenter alone first, D untouched):

1. one D step with its own optimiser: ``d_loss = BCE(D(x, y), 1) + BCE(D(x, S(x).detach()), 0)``;
2. one segmenter step (the usual optimiser, schedule, clipping, accumulation) on
   ``seg_loss + weight * BCE(D(x, S(x)), 1)``, scored by the just-updated D, whose weights take no
   gradient from it.

``train_loss`` in ``log.csv`` stays the segmentation loss alone; ``d_loss`` and ``adv_loss`` (the
unweighted ``BCE(D(x, S(x)), 1)``) are the epoch means. D's weights and optimiser state are in ``last.pt``
(``training.extra.adversarial``), so a resumed run continues exactly. D is initialised from its own seed
(``train.seed``), outside torch's global generator: switching the mode on does not change the segmenter's
initialisation or anything else the global generator draws. D always runs in float32 (outside autocast);
under DDP its gradients are averaged over the ranks before each step.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg.engine.config_adversarial import AdversarialConfig, DiscriminatorConfig
from medseg.engine.distributed import DistributedContext, all_reduce_sum
from medseg.errors import MedsegError
from medseg.layers import resize_to
from medseg.outputs import SegOutput, main_logits

if TYPE_CHECKING:
    from medseg.engine.config import RunConfig

__all__ = ["Adversary", "AdversarialConfig", "DiscriminatorConfig", "build_adversary"]

_SEED_SALT = 0xAD7E5


def _bce(scores: Tensor, real: bool) -> Tensor:
    target = torch.ones_like(scores) if real else torch.zeros_like(scores)
    return F.binary_cross_entropy_with_logits(scores, target)


class Adversary:
    """The discriminator, its optimiser and the per-batch game (see the module docstring)."""

    def __init__(self, config: AdversarialConfig, *, spatial_dims: int, image_channels: int, num_classes: int,
                 label_mode: str, seed: int, device: torch.device, ctx: DistributedContext) -> None:
        from medseg.models.discriminator import create_discriminator

        self.config, self.label_mode, self.num_classes, self.ctx = config, label_mode, num_classes, ctx
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed ^ _SEED_SALT)
            self.discriminator: nn.Module = create_discriminator(
                config.discriminator.name, spatial_dims=spatial_dims, image_channels=image_channels,
                map_channels=num_classes, **config.discriminator.options).to(device)
        params = self.discriminator.parameters()
        if config.optimiser == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        self._sums = torch.zeros(3, dtype=torch.float64, device=device)  # d_loss, adv_loss, batches

    def active(self, epoch: int) -> bool:
        return epoch >= self.config.start_epoch

    # ---------------------------------------------------------------- maps

    def probabilities(self, logits: Tensor, size: torch.Size) -> Tensor:
        """S(x): softmax (multiclass) or sigmoid (binary, multilabel) of the logits, float32, at ``size``
        (the image's)."""
        logits = logits.float()
        if logits.shape[2:] != size:
            logits = resize_to(logits, list(size))
        return logits.softmax(dim=1) if self.label_mode == "multiclass" else logits.sigmoid()

    def target_map(self, label: Tensor) -> Tensor:
        """The ground truth as D sees it: one-hot (multiclass, ``[B, 1, ...]`` class maps), else the masks."""
        if self.label_mode == "multiclass":
            return F.one_hot(label[:, 0].long(), self.num_classes).movedim(-1, 1).float()
        return label.float()

    # ---------------------------------------------------------------- the game

    def discriminator_step(self, image: Tensor, fake: Tensor, label: Tensor) -> Tensor:
        """One D update on real ``(image, y)`` and fake ``(image, fake)`` pairs; returns ``d_loss``."""
        self.discriminator.train()
        self.discriminator.requires_grad_(True)
        real = self.target_map(label)
        loss = _bce(self.discriminator(image, real), True) + _bce(self.discriminator(image, fake.detach()),
                                                                    False)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.ctx.enabled:
            for parameter in self.discriminator.parameters():
                if parameter.grad is not None:
                    parameter.grad.copy_(all_reduce_sum(parameter.grad, self.ctx) / self.ctx.world_size)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def segmenter_term(self, image: Tensor, fake: Tensor) -> Tensor:
        """``BCE(D(x, S(x)), 1)`` with gradients into S only (D's weights are frozen for it)."""
        self.discriminator.requires_grad_(False)
        try:
            return _bce(self.discriminator(image, fake), True)
        finally:
            self.discriminator.requires_grad_(True)

    def objective(self, epoch: int, image: Tensor, output: Tensor | SegOutput, label: Tensor,
                  seg_loss: Tensor) -> Tensor:
        """The segmenter's loss for one batch: ``seg_loss`` before ``start_epoch``; after it, a D step first,
        then ``seg_loss + weight * adv_loss``."""
        if not self.active(epoch):
            return seg_loss
        image = image.float()
        fake = self.probabilities(main_logits(output), image.shape[2:])
        d_loss = self.discriminator_step(image, fake, label)
        adv_loss = self.segmenter_term(image, fake)
        self._sums += torch.stack([d_loss.double(), adv_loss.detach().double(),
                                   torch.ones((), dtype=torch.float64, device=d_loss.device)])
        return seg_loss + self.config.weight * adv_loss

    def epoch_log(self) -> dict[str, float]:
        """The epoch's mean ``d_loss`` and ``adv_loss`` over the ranks (empty when the term was off); the
        sums start again."""
        sums = all_reduce_sum(self._sums, self.ctx).cpu()
        self._sums.zero_()
        if sums[2] == 0:
            return {}
        return {"d_loss": (sums[0] / sums[2]).item(), "adv_loss": (sums[1] / sums[2]).item()}

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """D's weights and optimiser state (plain data, for ``training.extra.adversarial``)."""
        weights = {k: v.detach().cpu().clone() for k, v in self.discriminator.state_dict().items()}
        return {"discriminator": weights, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Any, source: Path) -> None:
        if not isinstance(state, dict) or not {"discriminator", "optimizer"} <= set(state):
            raise MedsegError(f"train.adversarial: {source} was written without the adversarial mode (no "
                              "discriminator state); resume with train.adversarial null or start a new run")
        try:
            self.discriminator.load_state_dict(state["discriminator"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = next((s.strip() for s in str(exc).splitlines() if s.strip()), str(exc))
            raise MedsegError(f"train.adversarial: the discriminator state in {source} does not fit "
                              f"train.adversarial.discriminator: {first[:200]}") from None


def build_adversary(config: RunConfig, *, spatial_dims: int, in_channels: int, num_classes: int,
                    device: torch.device, ctx: DistributedContext) -> Adversary | None:
    """The run's :class:`Adversary`, or None without ``train.adversarial``."""
    settings = config.train.adversarial
    if settings is None:
        return None
    return Adversary(settings, spatial_dims=spatial_dims, image_channels=in_channels, num_classes=num_classes,
                     label_mode=config.data.label_mode, seed=config.train.seed, device=device, ctx=ctx)
