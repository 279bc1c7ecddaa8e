"""Mask R-CNN: torchvision's parameter count and key names, the train/eval contract, weight loading, and
training on synthetic discs to AP50 > 0.9."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import medseg
from medseg.data.instances import instance_targets_from_label_map
from medseg.encoders import create_encoder
from medseg.errors import MedsegError
from medseg.models.mask_rcnn import LOSS_NAMES, MaskRCNN, convert_torchvision_keys
from medseg.models.registry import count_parameters

TORCHVISION_REFERENCE = 44_401_393
# conv1 (64*3*7*7) and layer1's convs (3 bottlenecks + projection) are frozen by trainable_layers=3
FROZEN_BY_THREE = (64 * 3 * 49 + (64 * 64 + 64 * 64 * 9 + 64 * 256 + 64 * 256)
                   + 2 * (256 * 64 + 64 * 64 * 9 + 64 * 256))

# keys and shapes of torchvision's maskrcnn_resnet50_fpn (91 classes), as in its weight file
TORCHVISION_KEYS = {
    "backbone.body.conv1.weight": (64, 3, 7, 7),
    "backbone.body.bn1.running_var": (64,),
    "backbone.body.layer1.0.conv1.weight": (64, 64, 1, 1),
    "backbone.body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "backbone.body.layer2.0.conv2.weight": (128, 128, 3, 3),
    "backbone.body.layer3.5.bn2.weight": (256,),
    "backbone.body.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "backbone.fpn.inner_blocks.0.weight": (256, 256, 1, 1),
    "backbone.fpn.inner_blocks.3.weight": (256, 2048, 1, 1),
    "backbone.fpn.layer_blocks.2.weight": (256, 256, 3, 3),
    "rpn.head.conv.weight": (256, 256, 3, 3),
    "rpn.head.cls_logits.weight": (3, 256, 1, 1),
    "rpn.head.bbox_pred.weight": (12, 256, 1, 1),
    "roi_heads.box_head.fc6.weight": (1024, 12544),
    "roi_heads.box_head.fc7.weight": (1024, 1024),
    "roi_heads.box_predictor.cls_score.weight": (91, 1024),
    "roi_heads.box_predictor.bbox_pred.weight": (364, 1024),
    "roi_heads.mask_head.mask_fcn1.weight": (256, 256, 3, 3),
    "roi_heads.mask_head.mask_fcn4.bias": (256,),
    "roi_heads.mask_predictor.conv5_mask.weight": (256, 256, 2, 2),
    "roi_heads.mask_predictor.mask_fcn_logits.weight": (91, 256, 1, 1),
}

SMALL = {"encoder": "resnet18", "encoder_options": {"widths": (16, 32, 64, 128), "stem_width": 16},
         "fpn_channels": 32, "representation_size": 128, "mask_head_channels": 32, "min_size": None,
         "max_size": None, "anchor_sizes": ((8,), (16,), (32,), (64,), (128,)), "image_mean": (0.5,) * 3,
         "image_std": (0.25,) * 3, "rpn_pre_nms_top_n": (500, 200), "rpn_post_nms_top_n": (200, 100),
         "box_batch_size_per_image": 64, "rpn_batch_size_per_image": 128}


def reference(**options: object) -> MaskRCNN:
    with torch.device("meta"):
        return medseg.create_model("mask_rcnn", in_channels=3, num_classes=91, backbone_norm="frozen_batch",
                                   **options)


def small(num_classes: int = 2, seed: int = 0, **options: object) -> MaskRCNN:
    torch.manual_seed(seed)
    return medseg.create_model("mask_rcnn", in_channels=3, num_classes=num_classes, **{**SMALL, **options})


def discs(seed: int, n_images: int, size: int = 64) -> tuple[list[torch.Tensor], list[dict]]:
    """Grey images with 1-4 bright, non-touching discs (radius 5-10) and their instance targets."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, targets = [], []
    for _ in range(n_images):
        label_map = np.zeros((size, size), np.int64)
        wanted, placed = rng.integers(1, 5), 0
        for _ in range(200):
            if placed == wanted:
                break
            r = rng.uniform(5, 10)
            cy, cx = rng.uniform(r, size - r, 2)
            dist = (yy - cy) ** 2 + (xx - cx) ** 2
            if (label_map[dist <= (r + 2) ** 2] > 0).any():
                continue
            placed += 1
            label_map[dist <= r * r] = placed
        image = 0.2 + 0.6 * (label_map > 0) + rng.normal(0, 0.05, label_map.shape)
        images.append(torch.tensor(image, dtype=torch.float32).expand(3, -1, -1).clone())
        targets.append(instance_targets_from_label_map(label_map))
    return images, targets


def mask_ap50(predictions: list[dict], targets: list[dict]) -> float:
    """COCO-style AP at mask IoU 0.5: greedy matching by score, 101-point interpolated precision."""
    scored, n_gt = [], 0
    for pred, target in zip(predictions, targets, strict=True):
        gt = target["masks"].bool().flatten(1).float()
        n_gt += gt.shape[0]
        order = torch.argsort(pred["scores"], descending=True)
        masks = pred["masks"][order].flatten(1).float()
        inter = masks @ gt.T
        iou = inter / (masks.sum(1)[:, None] + gt.sum(1)[None] - inter).clamp(min=1)
        used: set[int] = set()
        for i, index in enumerate(order.tolist()):
            free = [(v, j) for j, v in enumerate(iou[i].tolist()) if j not in used and v >= 0.5]
            if free:
                used.add(max(free)[1])
            scored.append((pred["scores"][index].item(), bool(free)))
    scored.sort(key=lambda s: -s[0])
    hits = np.array([s[1] for s in scored], dtype=float)
    tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
    recall, precision = tp / max(n_gt, 1), tp / np.maximum(tp + fp, 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(sum(precision[i] if i < len(precision) else 0.0 for i in at) / 101)


def test_mask_ap50_scores_known_cases() -> None:
    gt = {"masks": torch.zeros(2, 8, 8, dtype=torch.uint8)}
    gt["masks"][0, :4, :4] = 1
    gt["masks"][1, 4:, 4:] = 1
    perfect = {"masks": gt["masks"].bool(), "scores": torch.tensor([0.9, 0.8])}
    assert mask_ap50([perfect], [gt]) == pytest.approx(1.0)
    half = {"masks": gt["masks"][:1].bool(), "scores": torch.tensor([0.9])}
    assert mask_ap50([half], [gt]) == pytest.approx(51 / 101)
    assert mask_ap50([{"masks": torch.zeros(0, 8, 8, dtype=torch.bool), "scores": torch.zeros(0)}], [gt]) == 0


def test_parameter_count_matches_torchvision_exactly() -> None:
    model = reference()
    assert count_parameters(model, trainable_only=False) == TORCHVISION_REFERENCE
    assert count_parameters(model) == TORCHVISION_REFERENCE  # no weights given: everything trainable
    assert not any("num_batches_tracked" in k for k in model.state_dict())


def test_trainable_layers_freeze_conv1_and_layer1_but_the_count_keeps_them() -> None:
    model = reference(trainable_layers=3)
    assert count_parameters(model, trainable_only=False) == TORCHVISION_REFERENCE
    assert count_parameters(model) == TORCHVISION_REFERENCE - FROZEN_BY_THREE
    frozen = {n.split(".")[2] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}


def test_torchvision_key_names_and_shapes() -> None:
    state = reference().state_dict()
    for key, shape in TORCHVISION_KEYS.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


def test_resnet101_backbone_adds_its_extra_trunk_only() -> None:
    with torch.device("meta"):
        trunks = {name: count_parameters(create_encoder(name, norm="frozen_batch"))
                  for name in ("resnet50", "resnet101")}
    assert trunks["resnet101"] - trunks["resnet50"] > 18_000_000
    assert count_parameters(reference(encoder="resnet101")) == \
        TORCHVISION_REFERENCE + trunks["resnet101"] - trunks["resnet50"]


def test_registry_marks_it_as_an_instance_model() -> None:
    info = medseg.model_info("mask_rcnn")
    assert info["task"] == "instance" and info["dims"] == [2] and not info["exportable"]
    assert medseg.model_info("unet")["task"] == "semantic"
    with pytest.raises(MedsegError, match="background"):
        medseg.create_model("mask_rcnn", in_channels=3, num_classes=1)


def test_training_returns_the_five_losses_and_they_go_down_on_one_batch() -> None:
    images, targets = discs(0, 2)
    model = small()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    totals = []
    for _ in range(8):
        losses = model(images, targets)
        assert set(losses) == set(LOSS_NAMES)
        assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert min(totals[-3:]) < 0.5 * totals[0], totals


def test_eval_returns_detections_at_the_input_size() -> None:
    images, _ = discs(1, 2, size=48)
    model = small().eval()
    with torch.no_grad():
        out = model(torch.stack(images))
        probs = small(mask_threshold=None).eval()([images[0][:, :40, :44]])
    assert len(out) == 2
    for det in out:
        n = det["boxes"].shape[0]
        assert 0 < n <= 100
        assert det["masks"].shape == (n, 48, 48) and det["masks"].dtype == torch.bool
        assert det["labels"].shape == (n,) and set(det["labels"].tolist()) <= {1}
        assert (det["scores"][:-1] >= det["scores"][1:]).all() and (det["scores"] > 0.05).all()
        assert (det["boxes"] >= 0).all() and (det["boxes"][:, 2:] <= 48).all()
    assert probs[0]["masks"].dtype == torch.float32 and probs[0]["masks"].shape[1:] == (40, 44)


def test_resizing_maps_detections_back_to_the_input_size() -> None:
    images, targets = discs(2, 1, size=40)
    model = small(min_size=80, max_size=200)
    model(images, targets)["loss_mask"].backward()  # the resized targets fit the resized image
    model.eval()
    with torch.no_grad():
        det = model(images)[0]
    assert det["masks"].shape[1:] == (40, 40)
    assert (det["boxes"][:, 2:] <= 40).all()


def test_class_agnostic_masks_have_one_output() -> None:
    images, targets = discs(3, 1)
    targets[0]["labels"] = torch.full_like(targets[0]["labels"], 2)
    model = small(num_classes=3, class_agnostic_masks=True)
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 1
    losses = model(images, targets)
    assert torch.isfinite(losses["loss_mask"])


def test_images_without_objects_train() -> None:
    images, targets = discs(4, 2)
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                  "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}
    losses = small()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_inputs_are_clear_errors() -> None:
    images, targets = discs(5, 1)
    model = small()
    with pytest.raises(MedsegError, match="targets in training"):
        model(images)
    with pytest.raises(MedsegError, match=r"expected \[3, H, W\]"):
        model([images[0][:1]], targets)
    bad = dict(targets[0], labels=torch.full_like(targets[0]["labels"], 5))
    with pytest.raises(MedsegError, match="labels 1..1"):
        model(images, [bad])
    with pytest.raises(MedsegError, match="masks"):
        model(images, [dict(targets[0], masks=targets[0]["masks"][:, :10])])


def to_new_torchvision_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.replace("rpn.head.conv.", "rpn.head.conv.0.0.")
        for kind in ("inner", "layer"):
            for i in range(4):
                key = key.replace(f"backbone.fpn.{kind}_blocks.{i}.", f"backbone.fpn.{kind}_blocks.{i}.0.")
        for i in range(1, 5):
            key = key.replace(f"roi_heads.mask_head.mask_fcn{i}.", f"roi_heads.mask_head.{i - 1}.0.")
        out[key] = value
    return out


def test_torchvision_weight_files_load_in_either_key_layout(tmp_path) -> None:
    source = small(num_classes=4, seed=1, backbone_norm="frozen_batch")
    state = source.state_dict()
    new_layout = to_new_torchvision_layout(state)
    assert "rpn.head.conv.0.0.weight" in new_layout and "roi_heads.mask_head.3.0.bias" in new_layout
    assert convert_torchvision_keys(new_layout).keys() == state.keys()
    path = tmp_path / "maskrcnn.pth"
    torch.save(new_layout, path)
    target = small(num_classes=2, seed=2, backbone_norm="frozen_batch")
    skipped = target.load_torchvision_weights(path)
    assert sorted(skipped) == sorted(k for k in state if k.startswith(
        ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")))
    loaded = target.state_dict()
    for key in ("backbone.body.layer1.0.bn1.running_mean", "rpn.head.conv.weight",
                "roi_heads.mask_head.mask_fcn4.weight", "backbone.fpn.inner_blocks.2.bias"):
        assert torch.equal(loaded[key], state[key]), key
    from_file = small(num_classes=4, weights=path)  # weights: frozen BN, conv1 and layer1 frozen
    assert torch.equal(from_file.state_dict()["roi_heads.box_predictor.cls_score.weight"],
                       state["roi_heads.box_predictor.cls_score.weight"])
    assert not from_file.backbone.body.conv1.weight.requires_grad
    assert from_file.backbone.body.layer2[0].conv1.weight.requires_grad
    torch.save({k: v for k, v in state.items() if not k.startswith("rpn.")}, path)
    with pytest.raises(MedsegError, match="missing: rpn.head"):
        small(num_classes=4).load_torchvision_weights(path)


@pytest.mark.slow
def test_learns_synthetic_discs_to_ap50_above_0_9() -> None:
    torch.set_num_threads(1)
    images, targets = discs(0, 8)
    held_out, held_out_targets = discs(1, 8)
    model = small()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    start = time.perf_counter()
    for _ in range(60):
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        train_ap = mask_ap50(model(images), targets)
        held_out_ap = mask_ap50(model(held_out), held_out_targets)
    assert train_ap > 0.9 and held_out_ap > 0.9, (train_ap, held_out_ap, time.perf_counter() - start)
