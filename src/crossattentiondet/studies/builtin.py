"""The built-in studies of the seed documents (seeds/000, seeds/002) and ORIGINAL.md, with the original ids.

Each is a plain study mapping (the same layout as a YAML spec file; ``cadet study plan NAME --print-spec``
prints it, ready to copy and edit). Recipes (epochs, batch, lr, weight decay, schedule) come from the
``recipe_*`` presets, so a spec can swap them (``--base preset:recipe_cssa_a100``).

Differences from the original runs, on purpose:
- cssa/gaff compare against a matched baseline (same recipe, seeds, separate-stream flow and drop-path 0.1,
  the studied module at no stage, so FRM+FFM everywhere); the original compared against a baseline trained
  with another recipe and flow. ``model.fusion.flow=fused model.drop_path_rate=0`` reproduces the original's.
- phase 2 selects on validation mAP (mean over seeds), never on test.
- the modality study removes modalities from the input streams rather than zeroing their channels
  (``model.zero_modalities`` reproduces the original's zeroing).
"""

from __future__ import annotations

import copy
from typing import Any

FUSION_STAGE_SETS_CSSA = [[1], [2], [3], [4], [2, 3], [3, 4], [1, 2, 3, 4]]
FUSION_STAGE_SETS_GAFF = [[1], [2], [3], [4], [2, 3], [3, 4], [2, 3, 4], [1, 2, 3, 4]]

# seeds/000 section 8.1: effective batch 16 per backbone (batch x accumulation), AMP and gradient checkpointing
# for the two largest. mit_b3 is not in the table: its stage-1/2 depths (3, 4) equal mit_b2's, and those
# high-resolution stages dominate activation memory (its extra depth is at 1/16 resolution), so it gets
# mit_b2's 4 x 4 in fp32 rather than the 2 x 8 fp16 + checkpointing of mit_b4 (whose stage 2 is twice as deep).
BACKBONE_TABLE: dict[str, dict[str, Any]] = {
    "mit_b0": {"batch_size": 16, "accumulation": 1, "precision": "fp32", "grad_checkpointing": False},
    "mit_b1": {"batch_size": 16, "accumulation": 1, "precision": "fp32", "grad_checkpointing": False},
    "mit_b2": {"batch_size": 4, "accumulation": 4, "precision": "fp32", "grad_checkpointing": False},
    "mit_b3": {"batch_size": 4, "accumulation": 4, "precision": "fp32", "grad_checkpointing": False},
    "mit_b4": {"batch_size": 2, "accumulation": 8, "precision": "fp16", "grad_checkpointing": True},
    "mit_b5": {"batch_size": 2, "accumulation": 8, "precision": "fp16", "grad_checkpointing": True},
}

# the clean comparison: separate streams and drop-path 0.1 as in the baseline
_MATCHED_FUSION = {"model.backbone": "mit_b1", "model.fusion.other": "frm_ffm", "model.fusion.flow": "separate",
                   "model.drop_path_rate": 0.1}

_CSSA: dict[str, Any] = {
    "name": "cssa",
    "description": "CSSA stage placement (phase 1), then switching threshold for the top 2 placements (phase 2); "
                   "seeds/000 section 2. Baseline: the same model with CSSA at no stage (FRM+FFM everywhere).",
    "base": "preset:recipe_cssa",
    "set": {**_MATCHED_FUSION, "model.fusion.type": "cssa", "model.fusion.cssa.switching_thresh": 0.5,
            "model.fusion.cssa.kernel_size": 3},
    "baseline": {"model.fusion.stages": []},
    "id_format": "exp_{n:03d}_s{stages}_t{thresh}",
    "id_fields": {"stages": "model.fusion.stages", "thresh": "model.fusion.cssa.switching_thresh"},
    "phases": [
        {"name": "stage_placement", "axes": {"model.fusion.stages": FUSION_STAGE_SETS_CSSA}},
        {"name": "threshold", "select": {"top_k": 2, "metric": "mAP"},
         "axes": {"model.fusion.cssa.switching_thresh": [0.3, 0.7]}},
    ],
}

_GAFF: dict[str, Any] = {
    "name": "gaff",
    "description": "GAFF stage placement (phase 1), then SE reduction x shared inter-modality gate x merge "
                   "bottleneck for the top 3 placements (phase 2); seeds/000 section 3, with the recipe of "
                   "the runs actually made. Baseline: the same model with GAFF at no stage.",
    "base": "preset:recipe_gaff_actual",
    "set": {**_MATCHED_FUSION, "model.fusion.type": "gaff", "model.fusion.gaff.se_reduction": 4,
            "model.fusion.gaff.inter_shared": False, "model.fusion.gaff.merge_bottleneck": False},
    "baseline": {"model.fusion.stages": []},
    "id_format": "exp_{n:03d}_s{stages}_r{r}_is{is}_mb{mb}",
    "id_fields": {"stages": "model.fusion.stages", "r": "model.fusion.gaff.se_reduction",
                  "is": "model.fusion.gaff.inter_shared", "mb": "model.fusion.gaff.merge_bottleneck"},
    "phases": [
        {"name": "stage_placement", "axes": {"model.fusion.stages": FUSION_STAGE_SETS_GAFF}},
        {"name": "hyperparameters", "select": {"top_k": 3, "metric": "mAP"}, "exclude_parent": True,
         "axes": {"model.fusion.gaff.se_reduction": [4, 8], "model.fusion.gaff.inter_shared": [False, True],
                  "model.fusion.gaff.merge_bottleneck": [False, True]}},
    ],
}

_BACKBONES: dict[str, Any] = {
    "name": "backbones",
    "description": "MiT-B0..B5 at an effective batch of 16 (seeds/000 section 8: batch x accumulation, fp16 and "
                   "gradient checkpointing for B4/B5). Baseline: mit_b1, the original baseline backbone.",
    "base": "preset:recipe_baseline",
    "baseline": "mit_b1",
    "phases": [
        {"name": "backbone", "points": [
            {"id": name, "set": {"model.backbone": name, "train.batch_size": row["batch_size"],
                                 "train.accumulation": row["accumulation"], "train.precision": row["precision"],
                                 "model.grad_checkpointing": row["grad_checkpointing"]}}
            for name, row in BACKBONE_TABLE.items()]},
    ],
}

_MODALITY_STREAMS: dict[str, list[list[str]]] = {
    "all": [["rgb"], ["thermal", "event"]],
    "rgb_thermal": [["rgb"], ["thermal"]],
    "rgb_event": [["rgb"], ["event"]],
    "thermal_event": [["thermal"], ["event"]],
    "rgb": [["rgb"]],
    "thermal": [["thermal"]],
    "event": [["event"]],
}

_MODALITIES: dict[str, Any] = {
    "name": "modalities",
    "description": "Which modalities matter: all three, each pair (two streams fused by FRM+FFM) and each one "
                   "alone (a single stream). Baseline: all modalities.",
    "base": "preset:recipe_baseline",
    "baseline": "all",
    "phases": [{"name": "modalities", "points": [
        {"id": name, "set": {"model.streams": streams}} for name, streams in _MODALITY_STREAMS.items()]}],
}

_FUSION: dict[str, Any] = {
    "name": "fusion",
    "description": "Fusion modules compared at the same stages (1-4), flow and recipe: early fusion (one stream "
                   "of all modalities), add, concat, FRM+FFM (the original baseline), CSSA, GAFF.",
    "base": "preset:recipe_baseline",
    "set": {"model.backbone": "mit_b1", "model.fusion.stages": [1, 2, 3, 4], "model.fusion.flow": "separate",
            "model.drop_path_rate": 0.1},
    "baseline": "frm_ffm",
    "phases": [{"name": "fusion", "points": [
        {"id": "early_fusion", "set": {"model.streams": [["rgb", "thermal", "event"]]}},
        {"id": "add", "set": {"model.fusion.type": "add"}},
        {"id": "concat", "set": {"model.fusion.type": "concat"}},
        {"id": "frm_ffm", "set": {"model.fusion.type": "frm_ffm"}},
        {"id": "cssa", "set": {"model.fusion.type": "cssa"}},
        {"id": "gaff", "set": {"model.fusion.type": "gaff"}},
    ]}],
}

BUILTIN_STUDIES: dict[str, dict[str, Any]] = {
    "cssa": _CSSA, "gaff": _GAFF, "backbones": _BACKBONES, "modalities": _MODALITIES, "fusion": _FUSION,
}

# `--quick`: a tiny model (the demo preset's narrow MiT, narrower still), the built-in synthetic data, one
# epoch; the study keeps its axes, ids and phases. Applied after each configuration's own changes, except
# for keys a configuration sets itself (a study of train.epochs keeps its epochs); QUICK_FORCED keys are
# always applied (fp16 cannot run on a CPU, the data must be the synthetic set).
QUICK_OVERRIDES: list[str] = [
    "data.root=null", "data.synthetic.images=32", "data.synthetic.size=[64,48]", "data.loader.num_workers=0",
    # 32 frames are 2 sequences, too few to split by sequence: a smoke test splits in blocks (leaky, but fast)
    "data.split.group_by=blocks:4", "data.split.gap=0",
    "model.pretrained=null", "model.mit.embed_dims=[8,16,24,32]", "model.mit.num_heads=[1,2,2,4]",
    "model.detector.fpn_channels=16", "model.detector.box_head_dim=32",
    "model.detector.anchor_sizes=[[8],[16],[32],[64],[128]]", "model.detector.rpn.batch_size_per_image=32",
    "model.detector.roi.batch_size_per_image=32", "model.detector.rpn.pre_nms_top_n_train=200",
    "model.detector.rpn.post_nms_top_n_train=100", "model.detector.rpn.pre_nms_top_n_test=100",
    "model.detector.rpn.post_nms_top_n_test=50", "train.epochs=1", "train.batch_size=4", "train.precision=fp32",
    "train.grad_clip=10.0", "eval.speed_iters=1", "eval.robustness=false", "eval.panels=0", "eval.plots=false",
    "output.tensorboard=false",
]
QUICK_FORCED = frozenset({"data.root", "model.pretrained", "train.precision"})


def builtin_spec(name: str) -> dict[str, Any]:
    """A deep copy of the built-in study ``name`` (a study mapping)."""
    return copy.deepcopy(BUILTIN_STUDIES[name])
