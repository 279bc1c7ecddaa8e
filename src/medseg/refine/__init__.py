"""Boundary Patch Refinement (BPR, Tang et al., CVPR 2021) at the data level: boundary patches of a coarse
mask and the reassembly of refined patches, for binary masks, semantic label maps and instance label maps,
2D and 3D. The refinement network is :mod:`medseg.models.bpr`; training data and the ``medseg refine``
command are :mod:`medseg.engine.refine`.

Like :mod:`medseg.data`, a leaf: it imports numpy, torch, scipy and :mod:`medseg.ops` only.
"""

from medseg.refine.patches import (
    INFERENCE_IOU,
    TRAINING_IOU,
    PatchRefineFn,
    boundary_patches,
    boundary_score,
    crop_patches,
    mean_patch_probabilities,
    patch_shape,
    refine_label_map,
    refine_mask,
)

__all__ = ["INFERENCE_IOU", "TRAINING_IOU", "PatchRefineFn", "boundary_patches", "boundary_score",
           "crop_patches", "mean_patch_probabilities", "patch_shape", "refine_label_map", "refine_mask"]
