"""Detection ops: boxes (IoU, NMS, coding, pasting), anchors and RoIAlign, 2D and (where noted) 3D.

Layer-level utilities beside :mod:`medseg.layers`: they import only torch, numpy and
:mod:`medseg.errors`, and any model or block may use them.
"""

from medseg.ops.anchors import AnchorGenerator, cell_anchors
from medseg.ops.boxes import (
    BoxCoder,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes_to_image,
    nms,
    paste_masks_in_image,
    remove_small_boxes,
)
from medseg.ops.roi import LevelMapper, MultiScaleRoIAlign, infer_scale, roi_align

__all__ = ["AnchorGenerator", "BoxCoder", "LevelMapper", "MultiScaleRoIAlign", "batched_nms", "box_area",
           "box_iou", "cell_anchors", "clip_boxes_to_image", "infer_scale", "nms", "paste_masks_in_image",
           "remove_small_boxes", "roi_align"]
