"""Pieces shared by two-stage detectors: matching, sampling, the region proposal network and the image
transform (Ren et al. 2015, "Faster R-CNN"; Lin et al. 2017, "Feature Pyramid Networks").

Numbers and rules follow torchvision's ``models/detection`` (``_utils.py``, ``rpn.py``,
``transform.py``) so that its weight files behave the same here; the code is ours.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg.errors import MedsegError
from medseg.ops import (
    AnchorGenerator,
    BoxCoder,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)

Target = dict[str, Tensor]

BELOW_LOW = -1
BETWEEN = -2


class Matcher:
    """Assigns each prediction (anchor or proposal) the ground truth of highest IoU.

    Returns per prediction the ground-truth index, ``-1`` if the best IoU is below ``low``, ``-2`` if it
    lies in ``[low, high)``. ``allow_low_quality_matches`` gives back its match to every prediction that
    ties for the highest IoU of some ground truth (Faster R-CNN: each object gets at least one anchor).
    """

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool = False) -> None:
        if low > high:
            raise MedsegError(f"Matcher: low threshold {low} above high threshold {high}")
        self.high, self.low, self.allow_low = high, low, allow_low_quality_matches

    def __call__(self, quality: Tensor) -> Tensor:
        """``quality``: IoU ``[num_gt, num_predictions]`` (at least one ground truth)."""
        values, matches = quality.max(dim=0)
        original = matches.clone()
        matches[values < self.low] = BELOW_LOW
        matches[(values >= self.low) & (values < self.high)] = BETWEEN
        if self.allow_low:
            best = quality.max(dim=1).values
            predictions = torch.where(quality == best[:, None])[1]
            matches[predictions] = original[predictions]
        return matches


class BalancedSampler:
    """Samples ``batch_size_per_image`` labels per image, at most ``positive_fraction`` of them positive
    (label >= 1) and the rest negative (label 0); labels -1 are never sampled. Returns per image the
    boolean masks of the sampled positives and negatives."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        self.batch_size, self.positive_fraction = batch_size_per_image, positive_fraction

    def __call__(self, labels: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        positives, negatives = [], []
        for lab in labels:
            pos = torch.where(lab >= 1)[0]
            neg = torch.where(lab == 0)[0]
            num_pos = min(pos.numel(), int(self.batch_size * self.positive_fraction))
            num_neg = min(neg.numel(), self.batch_size - num_pos)
            pos = pos[torch.randperm(pos.numel(), device=pos.device)[:num_pos]]
            neg = neg[torch.randperm(neg.numel(), device=neg.device)[:num_neg]]
            pos_mask = torch.zeros_like(lab, dtype=torch.bool)
            neg_mask = torch.zeros_like(lab, dtype=torch.bool)
            pos_mask[pos] = True
            neg_mask[neg] = True
            positives.append(pos_mask)
            negatives.append(neg_mask)
        return positives, negatives


# ------------------------------------------------------------------------------------------ RPN


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness (one logit per anchor) and 1x1 deltas (4 per anchor), shared
    over the pyramid levels (Ren et al. 2015, Sec. 3.1; torchvision's ``RPNHead``)."""

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in features:
            t = F.relu(self.conv(feature))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_level(x: Tensor, values: int) -> Tensor:
    """``[N, A * values, H, W]`` -> ``[N, H * W * A, values]`` (position-major, as the anchors)."""
    n, _, h, w = x.shape
    return x.view(n, -1, values, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, values)


class RegionProposalNetwork(nn.Module):
    """Proposals from anchors on every pyramid level, and the RPN losses in training.

    Args:
        in_channels: pyramid channels.
        anchor_generator: the anchors (default: sizes 32..512 on P2-P6, ratios 0.5/1/2).
        fg_iou, bg_iou: anchors with IoU >= ``fg_iou`` are positive, < ``bg_iou`` negative (0.7 / 0.3).
        batch_size_per_image, positive_fraction: anchors sampled for the loss (256, 0.5).
        pre_nms_top_n, post_nms_top_n: ``(train, test)`` proposals kept per level before NMS and per
            image after it ((2000, 1000) both).
        nms_threshold: IoU of the proposal NMS (0.7), done per level.
    """

    def __init__(self, in_channels: int, anchor_generator: AnchorGenerator | None = None,
                 fg_iou: float = 0.7, bg_iou: float = 0.3, batch_size_per_image: int = 256,
                 positive_fraction: float = 0.5, pre_nms_top_n: tuple[int, int] = (2000, 1000),
                 post_nms_top_n: tuple[int, int] = (2000, 1000),
                 nms_threshold: float = 0.7, score_threshold: float = 0.0) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors_per_location)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n, self.post_nms_top_n = tuple(pre_nms_top_n), tuple(post_nms_top_n)
        self.nms_threshold, self.score_threshold = nms_threshold, score_threshold
        self.min_size = 1e-3

    def _mode(self) -> int:
        return 0 if self.training else 1

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_sizes: Sequence[Sequence[int]],
                         per_level: Sequence[int]) -> list[Tensor]:
        """Top-n per level, clip, drop tiny boxes, NMS per level, keep the best ``post_nms_top_n``."""
        objectness = objectness.detach()
        top = []
        offset = 0
        for scores in objectness.split(list(per_level), dim=1):
            n = min(self.pre_nms_top_n[self._mode()], scores.shape[1])
            top.append(scores.topk(n, dim=1).indices + offset)
            offset += scores.shape[1]
        index = torch.cat(top, dim=1)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=proposals.device)
                            for i, n in enumerate(per_level)])
        rows = torch.arange(proposals.shape[0], device=proposals.device)[:, None]
        objectness, proposals, levels = objectness[rows, index], proposals[rows, index], levels[index]
        results = []
        for boxes, scores, lvl, size in zip(proposals, objectness, levels, image_sizes, strict=True):
            boxes = clip_boxes_to_image(boxes, size)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep].sigmoid(), lvl[keep]
            keep = torch.where(scores >= self.score_threshold)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = batched_nms(boxes, scores, lvl, self.nms_threshold)[:self.post_nms_top_n[self._mode()]]
            results.append(boxes[keep])
        return results

    def assign_targets(self, anchors: Tensor, targets: Sequence[Target]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: anchor labels (1, 0, -1 ignored) and the matched ground-truth boxes."""
        labels, matched = [], []
        for target in targets:
            gt = target["boxes"]
            if gt.numel() == 0:
                labels.append(torch.zeros(anchors.shape[0], device=anchors.device))
                matched.append(torch.zeros_like(anchors))
                continue
            idx = self.matcher(box_iou(gt, anchors))
            lab = (idx >= 0).to(anchors.dtype)
            lab[idx == BETWEEN] = -1.0
            labels.append(lab)
            matched.append(gt[idx.clamp(min=0)])
        return labels, matched

    def loss(self, objectness: Tensor, deltas: Tensor, labels: list[Tensor],
             regression_targets: list[Tensor]) -> dict[str, Tensor]:
        positives, negatives = self.sampler(labels)
        pos = torch.where(torch.cat(positives))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(negatives))[0]])
        labels_all, targets_all = torch.cat(labels), torch.cat(regression_targets)
        box_loss = F.smooth_l1_loss(deltas[pos], targets_all[pos], beta=1 / 9, reduction="sum")
        box_loss = box_loss / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled],
                                                             labels_all[sampled])
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}

    def forward(self, batch_size: Sequence[int], image_sizes: Sequence[Sequence[int]],
                features: Sequence[Tensor], targets: Sequence[Target] | None = None
                ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals per image (``[K_i, 4]`` in the resized image) and, in training, the RPN losses.

        ``batch_size`` is the padded batch's spatial size (anchors), ``image_sizes`` each image's size
        before padding (clipping)."""
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(batch_size, features)
        per_level = [x.shape[1] * x.shape[2] * x.shape[3] for x in logits]
        num_images = logits[0].shape[0]
        objectness = torch.cat([flatten_level(x, 1) for x in logits], dim=1).reshape(num_images, -1)
        deltas_flat = torch.cat([flatten_level(x, 4) for x in deltas], dim=1).reshape(-1, 4)
        all_anchors = anchors.repeat(num_images, 1)
        proposals = self.box_coder.decode(deltas_flat.detach(), all_anchors).view(num_images, -1, 4)
        boxes = self.filter_proposals(proposals, objectness, image_sizes, per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise MedsegError("the RPN needs targets in training mode")
            labels, matched = self.assign_targets(anchors, targets)
            regression = [self.box_coder.encode(m, anchors) for m in matched]
            losses = self.loss(objectness, deltas_flat, labels, regression)
        return boxes, losses


# ------------------------------------------------------------------------------------------ transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DetectionTransform(nn.Module):
    """Normalises, resizes and batches images (and their targets), and maps detections back.

    As torchvision's ``GeneralizedRCNNTransform``: ``(x - mean) / std``, then a bilinear resize so the
    shorter side is ``min_size`` unless the longer side would pass ``max_size``, then zero padding of
    the batch to a multiple of ``size_divisible``. A tuple ``min_size`` draws one per image in training
    (multi-scale training) and uses the last at test. ``min_size=None`` keeps the images' own size.
    Targets follow: boxes scaled, masks resized by nearest neighbour.
    """

    def __init__(self, min_size: int | Sequence[int] | None, max_size: int | None,
                 image_mean: Sequence[float], image_std: Sequence[float], size_divisible: int = 32) -> None:
        super().__init__()
        self.min_size = (min_size,) if isinstance(min_size, int) else (tuple(min_size) if min_size else None)
        self.max_size = max_size
        self.size_divisible = size_divisible
        self.register_buffer("image_mean", torch.as_tensor(image_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("image_std", torch.as_tensor(image_std, dtype=torch.float32), persistent=False)

    def resize(self, image: Tensor, target: Target | None) -> tuple[Tensor, Target | None]:
        if self.min_size is None:
            return image, target
        h, w = image.shape[-2:]
        size = random.choice(self.min_size) if self.training else self.min_size[-1]
        scale = size / min(h, w)
        if self.max_size is not None:
            scale = min(scale, self.max_size / max(h, w))
        image = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                              align_corners=False)[0]
        if target is None:
            return image, None
        nh, nw = image.shape[-2:]
        ratios = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32, device=image.device)
        target = dict(target)
        target["boxes"] = target["boxes"] * ratios
        if "masks" in target:
            masks = target["masks"]
            target["masks"] = F.interpolate(masks[:, None].float(), size=(nh, nw))[:, 0].to(masks.dtype)
        return image, target

    def forward(self, images: Sequence[Tensor], targets: Sequence[Target] | None = None
                ) -> tuple[Tensor, list[tuple[int, int]], list[Target] | None]:
        """The padded batch ``[B, C, H, W]``, each image's resized size, and the resized targets."""
        out_images, out_targets = [], []
        for i, image in enumerate(images):
            shape = [-1] + [1] * (image.dim() - 1)
            image = (image - self.image_mean.view(shape)) / self.image_std.view(shape)
            image, target = self.resize(image, None if targets is None else targets[i])
            out_images.append(image)
            out_targets.append(target)
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in out_images]
        div = self.size_divisible
        height = -(-max(s[0] for s in sizes) // div) * div
        width = -(-max(s[1] for s in sizes) // div) * div
        batch = out_images[0].new_zeros((len(out_images), out_images[0].shape[0], height, width))
        for b, image in zip(batch, out_images, strict=True):
            b[:, :image.shape[1], :image.shape[2]].copy_(image)
        return batch, sizes, (None if targets is None else out_targets)  # type: ignore[return-value]
