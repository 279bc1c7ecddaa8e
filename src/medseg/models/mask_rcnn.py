"""Mask R-CNN (He et al. 2017, "Mask R-CNN", ICCV) with a ResNet-FPN backbone (Lin et al. 2017).

Two stages (Fig. 1): a region proposal network proposes boxes on the feature pyramid; for each RoI the
second stage predicts, in parallel, class scores, class-specific box deltas and one 28x28 mask per class
(per-pixel sigmoid; the loss uses only the ground-truth class's mask, Sec. 3). The layout and every
number follow torchvision's ``maskrcnn_resnet50_fpn``, and the state-dict keys are its keys
(``backbone.body.*``, ``backbone.fpn.*``, ``rpn.head.*``, ``roi_heads.box_head.fc6``, ...), so its weight
files load (:meth:`MaskRCNN.load_torchvision_weights`; the newer ``conv.0.0`` key layout is converted).

Not the semantic contract of the zoo: ``model(images, targets)`` takes a list of ``[C, H, W]`` images (or
a ``[B, C, H, W]`` tensor) and, in training, a list of targets ``{"boxes": [N, 4] (x1, y1, x2, y2) in
pixels, "labels": [N] int64 in 1..num_classes-1, "masks": [N, H, W] uint8/bool}``; it returns the loss
dict ``{loss_classifier, loss_box_reg, loss_mask, loss_objectness, loss_rpn_box_reg}`` in training and
per image ``{"boxes", "labels", "scores", "masks"}`` (masks ``[N, H, W]`` at the input size, thresholded
at ``mask_threshold``, or probabilities when it is None) in eval mode.

Differences from torchvision, deliberate: RoIAlign is the "aligned" form of the paper and Detectron2
(-0.5 pixel shift; torchvision pools with ``aligned=False``) and mask targets are RoIAligned with the
same 2x2 sampling; the default image sizes are smaller (``min_size=512, max_size=1024`` instead of
800/1333: medical images are small and their objects often dense).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg.encoders import Encoder, build_encoder, read_state_dict
from medseg.errors import MedsegError
from medseg.models.detection import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BalancedSampler,
    DetectionTransform,
    Matcher,
    RegionProposalNetwork,
    Target,
)
from medseg.models.registry import Reference, register_model
from medseg.ops import (
    AnchorGenerator,
    BoxCoder,
    MultiScaleRoIAlign,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    paste_masks_in_image,
    remove_small_boxes,
    roi_align,
)
from medseg.ops.anchors import ASPECT_RATIOS, PYRAMID_SIZES

logger = logging.getLogger(__name__)

PAPER = "He et al. 2017, Mask R-CNN (ICCV)"
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


# ------------------------------------------------------------------------------------------ backbone


class FeaturePyramidNetwork(nn.Module):
    """FPN (Lin et al. 2017, Fig. 3): lateral 1x1 convs to ``out_channels`` on C2-C5, top-down nearest
    upsampling and addition, 3x3 output convs; P6 = stride-2 subsampling of P5 (torchvision's
    ``LastLevelMaxPool``: max-pool with kernel 1, stride 2), used by the RPN only."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels])
        self.layer_blocks = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                           for _ in in_channels])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        last = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last)]
        for idx in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[idx](features[idx])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[idx](last))
        results.append(F.max_pool2d(results[-1], 1, 2, 0))
        return results


class ResNetFPN(nn.Module):
    """``body`` (a ResNet encoder: C2-C5 at strides 4-32) and ``fpn`` (P2-P6)."""

    def __init__(self, body: Encoder, out_channels: int = 256) -> None:
        super().__init__()
        if list(body.reductions[-4:]) != [4, 8, 16, 32]:
            raise MedsegError(f"Mask R-CNN needs an encoder with levels at strides 4, 8, 16, 32, got "
                              f"{list(body.reductions)}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.channels[-4:], out_channels)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.fpn(self.body(x)[-4:])


def freeze_backbone_layers(body: nn.Module, trainable_layers: int) -> None:
    """Freeze all but the last ``trainable_layers`` of (conv1, layer1, ..., layer4), as torchvision
    (5: everything trainable, including ``bn1``)."""
    if not 0 <= trainable_layers <= 5:
        raise MedsegError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    if trainable_layers == 5:
        return
    for name in ("conv1", "layer1", "layer2", "layer3", "layer4"):
        if not hasattr(body, name):
            raise MedsegError(f"trainable_layers < 5 needs a ResNet-style encoder (no {name!r})")
    train = ("layer4", "layer3", "layer2", "layer1", "conv1")[:trainable_layers]
    for name, p in body.named_parameters():
        if not name.startswith(train):
            p.requires_grad_(False)


# ------------------------------------------------------------------------------------------ heads


class TwoMLPHead(nn.Module):
    """The box head: flatten the 7x7 RoI features, FC + ReLU, FC + ReLU (Sec. 3, Fig. 4 right)."""

    def __init__(self, in_features: int, representation_size: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class FastRCNNPredictor(nn.Module):
    """Class logits (background included) and class-specific box deltas (4 per class)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNHeads(nn.Module):
    """The mask head's trunk: four 3x3 convs + ReLU on the 14x14 RoI features (Fig. 4 right)."""

    def __init__(self, in_channels: int, channels: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.depth = depth
        for i in range(1, depth + 1):
            conv = nn.Conv2d(in_channels if i == 1 else channels, channels, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            self.add_module(f"mask_fcn{i}", conv)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.depth + 1):
            x = F.relu(getattr(self, f"mask_fcn{i}")(x))
        return x


class MaskRCNNPredictor(nn.Module):
    """2x2 stride-2 transposed conv + ReLU (14 -> 28), then 1x1 conv to one mask logit map per class."""

    def __init__(self, in_channels: int, channels: int, num_masks: int) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, channels, 2, 2)
        self.mask_fcn_logits = nn.Conv2d(channels, num_masks, 1)
        for m in (self.conv5_mask, self.mask_fcn_logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.mask_fcn_logits(F.relu(self.conv5_mask(x)))


# ------------------------------------------------------------------------------------------ RoI heads


class RoIHeads(nn.Module):
    """The second stage: RoI sampling, box classification/regression and masks, losses and inference.

    Args:
        box_head, box_predictor, mask_head, mask_predictor: the modules (key names as torchvision's).
        fg_iou, bg_iou: proposals with IoU >= ``fg_iou`` are foreground, < ``bg_iou`` background (0.5).
        batch_size_per_image, positive_fraction: RoIs sampled per image (512, 25% foreground).
        score_threshold, nms_threshold, detections_per_image: inference (0.05, per-class 0.5, 100).
        class_agnostic_masks: one mask per RoI instead of one per class.
        aligned: RoIAlign's half-pixel alignment.
    """

    def __init__(self, box_head: nn.Module, box_predictor: nn.Module, mask_head: nn.Module,
                 mask_predictor: nn.Module, fg_iou: float = 0.5, bg_iou: float = 0.5,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 score_threshold: float = 0.05, nms_threshold: float = 0.5, detections_per_image: int = 100,
                 class_agnostic_masks: bool = False, aligned: bool = True, sampling_ratio: int = 2) -> None:
        super().__init__()
        self.box_head, self.box_predictor = box_head, box_predictor
        self.mask_head, self.mask_predictor = mask_head, mask_predictor
        self.box_roi_pool = MultiScaleRoIAlign(7, sampling_ratio, aligned)
        self.mask_roi_pool = MultiScaleRoIAlign(14, sampling_ratio, aligned)
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.detections_per_image = detections_per_image
        self.class_agnostic_masks = class_agnostic_masks
        self.aligned, self.sampling_ratio = aligned, sampling_ratio

    def sample(self, proposals: list[Tensor], targets: Sequence[Target]
               ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Proposals (ground truth added) sampled per image, their labels, matched gt indices and box
        regression targets."""
        out_props, out_labels, out_matched, out_regression = [], [], [], []
        for props, target in zip(proposals, targets, strict=True):
            gt_boxes, gt_labels = target["boxes"], target["labels"]
            props = torch.cat([props, gt_boxes.to(props.dtype)])
            if gt_boxes.numel() == 0:
                matched = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                labels = torch.zeros_like(matched)
                gt_boxes = props.new_zeros((1, 4))
            else:
                idx = self.matcher(box_iou(gt_boxes, props))
                matched = idx.clamp(min=0)
                labels = gt_labels[matched].to(torch.int64)
                labels[idx == -1] = 0
                labels[idx == -2] = -1
            pos, neg = self.sampler([labels])
            keep = torch.where(pos[0] | neg[0])[0]
            props, labels, matched = props[keep], labels[keep], matched[keep]
            out_props.append(props)
            out_labels.append(labels)
            out_matched.append(matched)
            out_regression.append(self.box_coder.encode(gt_boxes[matched], props))
        return out_props, out_labels, out_matched, out_regression

    def box_loss(self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                 regression_targets: list[Tensor]) -> dict[str, Tensor]:
        """Cross-entropy over classes; smooth L1 (beta 1/9) on the true class's deltas of the foreground
        RoIs, summed and divided by the number of sampled RoIs (torchvision's ``fastrcnn_loss``)."""
        labels_all, targets_all = torch.cat(labels), torch.cat(regression_targets)
        classification = F.cross_entropy(class_logits, labels_all)
        pos = torch.where(labels_all > 0)[0]
        deltas = box_regression.reshape(box_regression.shape[0], -1, 4)[pos, labels_all[pos]]
        box = F.smooth_l1_loss(deltas, targets_all[pos], beta=1 / 9, reduction="sum") / labels_all.numel()
        return {"loss_classifier": classification, "loss_box_reg": box}

    def mask_logits(self, features: Sequence[Tensor], boxes: list[Tensor],
                    batch_size: Sequence[int]) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, batch_size)))

    def mask_loss(self, logits: Tensor, boxes: list[Tensor], labels: list[Tensor], matched: list[Tensor],
                  targets: Sequence[Target]) -> Tensor:
        """BCE of the ground-truth class's 28x28 logits against the gt mask RoIAligned into each RoI."""
        size = logits.shape[-1]
        mask_targets = []
        for b, m, target in zip(boxes, matched, targets, strict=True):
            rois = torch.cat([m[:, None].to(b.dtype), b], dim=1)
            masks = target["masks"][:, None].to(b.dtype)
            mask_targets.append(roi_align(masks, rois, size, 1.0, self.sampling_ratio, self.aligned)[:, 0])
        mask_t = torch.cat(mask_targets)
        if mask_t.numel() == 0:
            return logits.sum() * 0
        lab = torch.zeros_like(torch.cat(labels)) if self.class_agnostic_masks else torch.cat(labels)
        chosen = logits[torch.arange(lab.shape[0], device=lab.device), lab]
        return F.binary_cross_entropy_with_logits(chosen, mask_t)

    def postprocess(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                    image_sizes: Sequence[Sequence[int]]) -> list[dict[str, Tensor]]:
        """Per image: class-specific boxes with score > threshold, per-class NMS, the best detections."""
        num_classes = class_logits.shape[-1]
        boxes_all = self.box_coder.decode(box_regression, torch.cat(proposals)).view(-1, num_classes, 4)
        scores_all = F.softmax(class_logits, -1)
        counts = [p.shape[0] for p in proposals]
        results = []
        per_image = zip(boxes_all.split(counts), scores_all.split(counts), image_sizes, strict=True)
        for boxes, scores, size in per_image:
            boxes = clip_boxes_to_image(boxes.reshape(-1, 4), size).view(-1, num_classes, 4)
            labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
            # drop the background column
            boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_threshold)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_threshold)[:self.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results

    def forward(self, features: Sequence[Tensor], proposals: list[Tensor], batch_size: Sequence[int],
                image_sizes: Sequence[Sequence[int]], targets: Sequence[Target] | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise MedsegError("Mask R-CNN needs targets in training mode")
            proposals, labels, matched, regression = self.sample(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, batch_size))
        class_logits, box_regression = self.box_predictor(box_features)
        if self.training:
            losses = self.box_loss(class_logits, box_regression, labels, regression)
            positive = [torch.where(lab > 0)[0] for lab in labels]
            pos_boxes = [p[i] for p, i in zip(proposals, positive, strict=True)]
            logits = self.mask_logits(features, pos_boxes, batch_size)
            pos_labels = [lab[i] for lab, i in zip(labels, positive, strict=True)]
            pos_matched = [m[i] for m, i in zip(matched, positive, strict=True)]
            losses["loss_mask"] = self.mask_loss(logits, pos_boxes, pos_labels, pos_matched, targets)
            return [], losses
        detections = self.postprocess(class_logits, box_regression, proposals, image_sizes)
        boxes = [d["boxes"] for d in detections]
        if sum(b.shape[0] for b in boxes) == 0:
            for d in detections:
                d["mask_probs"] = box_features.new_zeros((0, 28, 28))
            return detections, {}
        probs = self.mask_logits(features, boxes, batch_size).sigmoid()
        labels_all = torch.cat([d["labels"] for d in detections])
        chosen = torch.zeros_like(labels_all) if self.class_agnostic_masks else labels_all
        probs = probs[torch.arange(labels_all.shape[0], device=probs.device), chosen]
        for d, p in zip(detections, probs.split([b.shape[0] for b in boxes]), strict=True):
            d["mask_probs"] = p
        return detections, {}


# ------------------------------------------------------------------------------------------ model


def convert_torchvision_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map torchvision's newer key layout (``rpn.head.conv.0.0.``, ``fpn.inner_blocks.0.0.``,
    ``mask_head.0.0.``) to the original one used here; other keys are unchanged."""
    out = {}
    for key, value in state.items():
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        key = re.sub(r"backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.0\.", r"backbone.fpn.\1_blocks.\2.", key)
        key = re.sub(r"roi_heads\.mask_head\.(\d+)\.0\.",
                     lambda m: f"roi_heads.mask_head.mask_fcn{int(m.group(1)) + 1}.", key)
        out[key] = value
    return out


PREDICTOR_KEYS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


class MaskRCNN(nn.Module):
    """Mask R-CNN: ``transform`` -> ``backbone`` (ResNet + FPN) -> ``rpn`` -> ``roi_heads``.

    Args:
        backbone: a :class:`ResNetFPN`.
        num_classes: classes including the background (91 for COCO; 2 for one object class).
        in_channels: image channels.
        min_size, max_size, image_mean, image_std, size_divisible: the :class:`DetectionTransform`.
        anchor_sizes, aspect_ratios: the RPN's anchors per pyramid level.
        rpn_*: see :class:`~medseg.models.detection.RegionProposalNetwork`.
        box_*: see :class:`RoIHeads`; ``representation_size`` is the box head's FC width (1024).
        mask_head_channels: width of the mask head convs (256).
        class_agnostic_masks: one mask per RoI (``mask_fcn_logits`` has 1 output) instead of one per class.
        mask_threshold: probability threshold of the returned masks (None: return probabilities).
        aligned: RoIAlign with the half-pixel shift (the paper; False gives torchvision's pooling).
    """

    def __init__(self, backbone: ResNetFPN, num_classes: int, in_channels: int = 3,
                 min_size: int | Sequence[int] | None = 512, max_size: int | None = 1024,
                 image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None,
                 size_divisible: int = 32, anchor_sizes: Sequence[Sequence[float]] = PYRAMID_SIZES,
                 aspect_ratios: Sequence[float] = ASPECT_RATIOS, rpn_fg_iou: float = 0.7,
                 rpn_bg_iou: float = 0.3, rpn_batch_size_per_image: int = 256,
                 rpn_positive_fraction: float = 0.5,
                 rpn_pre_nms_top_n: Sequence[int] = (2000, 1000),
                 rpn_post_nms_top_n: Sequence[int] = (2000, 1000),
                 rpn_nms_threshold: float = 0.7, box_fg_iou: float = 0.5, box_bg_iou: float = 0.5,
                 box_batch_size_per_image: int = 512, box_positive_fraction: float = 0.25,
                 box_score_threshold: float = 0.05, box_nms_threshold: float = 0.5,
                 box_detections_per_image: int = 100, representation_size: int = 1024,
                 mask_head_channels: int = 256, class_agnostic_masks: bool = False,
                 mask_threshold: float | None = 0.5, aligned: bool = True) -> None:
        super().__init__()
        if num_classes < 2:
            raise MedsegError(f"Mask R-CNN's num_classes counts the background: use 2 or more (2 for one "
                              f"object class), got {num_classes}")
        if image_mean is None or image_std is None:
            image_mean, image_std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else \
                ((0.0,) * in_channels, (1.0,) * in_channels)
        if len(image_mean) != in_channels or len(image_std) != in_channels:
            raise MedsegError(f"image_mean and image_std need {in_channels} values (one per channel)")
        if len(anchor_sizes) != 5:
            raise MedsegError(f"anchor_sizes needs one entry per level P2-P6 (5), got {len(anchor_sizes)}")
        self.in_channels, self.num_classes, self.mask_threshold = in_channels, num_classes, mask_threshold
        self.transform = DetectionTransform(min_size, max_size, image_mean, image_std, size_divisible)
        self.backbone = backbone
        channels = backbone.out_channels
        self.rpn = RegionProposalNetwork(
            channels, AnchorGenerator(anchor_sizes, aspect_ratios), rpn_fg_iou, rpn_bg_iou,
            rpn_batch_size_per_image, rpn_positive_fraction, tuple(rpn_pre_nms_top_n),  # type: ignore[arg-type]
            tuple(rpn_post_nms_top_n), rpn_nms_threshold)  # type: ignore[arg-type]
        self.roi_heads = RoIHeads(
            TwoMLPHead(channels * 7 * 7, representation_size),
            FastRCNNPredictor(representation_size, num_classes),
            MaskRCNNHeads(channels, mask_head_channels),
            MaskRCNNPredictor(mask_head_channels, mask_head_channels,
                              1 if class_agnostic_masks else num_classes),
            box_fg_iou, box_bg_iou, box_batch_size_per_image, box_positive_fraction, box_score_threshold,
            box_nms_threshold, box_detections_per_image, class_agnostic_masks, aligned)

    def _check_inputs(self, images: Sequence[Tensor], targets: Sequence[Target] | None) -> None:
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != self.in_channels:
                raise MedsegError(f"image {i}: expected [{self.in_channels}, H, W], got {tuple(image.shape)}")
        if targets is None:
            return
        if len(targets) != len(images):
            raise MedsegError(f"{len(images)} images but {len(targets)} targets")
        for i, (image, t) in enumerate(zip(images, targets, strict=True)):
            missing = [k for k in ("boxes", "labels", "masks") if k not in t]
            if missing:
                raise MedsegError(f"target {i}: missing {', '.join(missing)}")
            boxes, labels, masks = t["boxes"], t["labels"], t["masks"]
            n = boxes.shape[0] if boxes.dim() == 2 else -1
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise MedsegError(f"target {i}: boxes must be [N, 4], got {tuple(boxes.shape)}")
            if labels.shape != (n,) or masks.shape != (n, *image.shape[-2:]):
                raise MedsegError(f"target {i}: {n} boxes need labels [{n}] and masks [{n}, "
                                  f"{image.shape[-2]}, {image.shape[-1]}], got {tuple(labels.shape)} and "
                                  f"{tuple(masks.shape)}")
            bad_labels = n and (labels.min() < 1 or labels.max() >= self.num_classes)
            if n and ((boxes[:, 2:] <= boxes[:, :2]).any() or bad_labels):
                raise MedsegError(f"target {i}: boxes need x2 > x1 and y2 > y1, labels "
                                  f"1..{self.num_classes - 1}")

    def forward(self, images: Sequence[Tensor] | Tensor, targets: Sequence[Target] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: the loss dict. Eval: per image ``{boxes, labels, scores, masks}`` at input size."""
        images = list(images.unbind(0)) if isinstance(images, Tensor) and images.dim() == 4 else list(images)
        if self.training and targets is None:
            raise MedsegError("Mask R-CNN needs targets in training mode (model.eval() for predictions)")
        self._check_inputs(images, targets)
        original_sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in images]
        batch, sizes, resized = self.transform(images, targets)
        features = self.backbone(batch)
        batch_size = batch.shape[-2:]
        proposals, rpn_losses = self.rpn(batch_size, sizes, features, resized)
        detections, roi_losses = self.roi_heads(features[:4], proposals, batch_size, sizes, resized)
        if self.training:
            return {**roi_losses, **rpn_losses}
        return [self._to_input_size(d, size, original) for d, size, original in
                zip(detections, sizes, original_sizes, strict=True)]

    def _to_input_size(self, detection: dict[str, Tensor], size: Sequence[int],
                       original: Sequence[int]) -> dict[str, Tensor]:
        ratio_h, ratio_w = original[0] / size[0], original[1] / size[1]
        scale = torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h], device=detection["boxes"].device)
        boxes = detection["boxes"] * scale
        probs = paste_masks_in_image(detection["mask_probs"], boxes, original)
        masks = probs if self.mask_threshold is None else probs > self.mask_threshold
        return {"boxes": boxes, "labels": detection["labels"], "scores": detection["scores"], "masks": masks}

    def load_torchvision_weights(self, path: str | Path) -> list[str]:
        """Load a ``maskrcnn_resnet50_fpn`` (or compatible) state-dict file. Predictor layers whose shape
        differs (another ``num_classes``) are skipped and returned, for fine-tuning; any other missing,
        unexpected or mismatched key is an error naming the file."""
        state = convert_torchvision_keys(read_state_dict(path))
        own = self.state_dict()
        skipped = [k for k in state
                   if k in own and state[k].shape != own[k].shape and k.startswith(PREDICTOR_KEYS)]
        for k in skipped:
            state.pop(k)
        mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                      if k in own and v.shape != own[k].shape]
        unexpected = [k for k in state if k not in own]
        missing = [k for k in own
                   if k not in state and k not in skipped and not k.endswith("num_batches_tracked")]
        if mismatched or unexpected or missing:
            parts = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                     for label, keys in (("mismatched", mismatched), ("unexpected", unexpected),
                                         ("missing", missing))
                     if keys]
            raise MedsegError(f"{path}: does not fit this Mask R-CNN ({'; '.join(parts)})")
        self.load_state_dict(state, strict=False)
        if skipped:
            logger.info("%s: predictor layers left at their initialisation (other num_classes): %s", path,
                        skipped)
        return skipped


@register_model(
    "mask_rcnn",
    paper=PAPER,
    dims=(2,),
    default_loss="internal",
    input_multiple=32,
    task="instance",
    exportable=False,
    references=[
        Reference(options={"in_channels": 3, "num_classes": 91, "backbone_norm": "frozen_batch"},
                  params=44_401_393,
                  source="torchvision maskrcnn_resnet50_fpn (91 classes, frozen-BN ResNet-50)"),
    ],
    small_options={"encoder": "resnet18", "encoder_options": {"widths": (16, 32, 64, 128), "stem_width": 16},
                   "fpn_channels": 32, "representation_size": 128, "mask_head_channels": 32, "min_size": 128,
                   "max_size": 128},
    aliases=("maskrcnn",),
)
def mask_rcnn(in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2,
              encoder: str | Encoder = "resnet50", encoder_options: Mapping[str, Any] | None = None,
              encoder_weights: str | Path | None = None,
              weights: str | Path | None = None, backbone_norm: str | None = None,
              trainable_layers: int | None = None, fpn_channels: int = 256, **options: Any) -> MaskRCNN:
    """Build a Mask R-CNN with a ResNet-FPN backbone.

    Args:
        encoder: a ResNet encoder name (``resnet18/34/50/101``) or instance; ``encoder_options`` and
            ``encoder_weights`` (a local ImageNet weight file) as every model.
        weights: a local torchvision Mask R-CNN weight file (:meth:`MaskRCNN.load_torchvision_weights`).
        backbone_norm: the trunk's norm; default as torchvision: ``frozen_batch`` when weights are
            given, ``batch`` otherwise (training from scratch).
        trainable_layers: trunk stages trained (0..5); default as torchvision: 3 with weights, else 5.
        fpn_channels: pyramid width (256).
        options: :class:`MaskRCNN` options (``min_size``, ``max_size``, ``anchor_sizes``, ``rpn_*``,
            ``box_*``, ``representation_size``, ``class_agnostic_masks``, ``mask_threshold``, ...).
    """
    if spatial_dims != 2:
        raise MedsegError("mask_rcnn is 2D only")
    pretrained = weights is not None or encoder_weights is not None
    norm = backbone_norm or ("frozen_batch" if pretrained else "batch")
    enc_options = dict(encoder_options or {})
    if isinstance(encoder, str):
        enc_options.setdefault("norm", norm)
    body = build_encoder(encoder, in_channels=in_channels, spatial_dims=2, weights=encoder_weights,
                         options=enc_options)
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    freeze_backbone_layers(body, trainable_layers)
    model = MaskRCNN(ResNetFPN(body, fpn_channels), num_classes, in_channels, **options)
    if weights is not None:
        model.load_torchvision_weights(weights)
    return model
