"""The DETR-family head: matcher, deformable attention, losses, forward passes, overfitting, config errors."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_convert

from crossattentiondet.config import ConfigError, load_config
from crossattentiondet.engine.evaluate import evaluate
from crossattentiondet.engine.freeze import set_frozen_stages
from crossattentiondet.engine.modelinfo import model_info
from crossattentiondet.engine.optim import build_optimizer
from crossattentiondet.models import build_detector
from crossattentiondet.models.detr import (
    DetrCriterion,
    DetrOutputs,
    HungarianMatcher,
    MultiModalDETR,
    MultiScaleDeformableAttention,
    deformable_sample,
    deformable_sample_naive,
)
from crossattentiondet.models.detr.denoising import attention_mask, build_denoising_queries
from crossattentiondet.models.detr.losses import DenoisingMeta
from crossattentiondet.tasks import get_task

# a tiny DETR head on a tiny MiT (stride 4 included); tests add streams/modalities
TINY_DETR = [
    "model.backbone=mit_b0", "model.mit.embed_dims=[8,16,24,32]", "model.mit.depths=[1,1,1,1]",
    "model.mit.num_heads=[1,1,1,1]", "model.detector.type=detr", "model.detector.detr.hidden_dim=32",
    "model.detector.detr.num_heads=2", "model.detector.detr.encoder_layers=1", "model.detector.detr.decoder_layers=2",
    "model.detector.detr.ffn_dim=64", "model.detector.detr.num_queries=20", "model.detector.detr.num_points=2",
    "model.detector.detr.levels=[1,2,3,4]",
]
RGB_ONLY = ["model.streams=[[rgb]]",
            "data.modalities=[{name: rgb, channels: 3, source: [0,1,2], mean: [0.5,0.5,0.5], std: [0.25,0.25,0.25]}]"]


@pytest.fixture
def one_thread():  # noqa: ANN201
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine two threads spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def detr(*extra: str, num_classes: int = 2) -> MultiModalDETR:
    model = build_detector(load_config(None, [*TINY_DETR, *extra]), num_classes, load_pretrained=False)
    assert isinstance(model, MultiModalDETR)
    return model


# ------------------------------------------------------------------------------------------------ matcher
def brute_force(cost: np.ndarray) -> float:
    """The least total cost of giving every target (column) its own query (row), by trying all of them."""
    queries, targets = cost.shape
    if queries >= targets:
        return min(sum(cost[q, t] for t, q in enumerate(rows)) for rows in itertools.permutations(range(queries), targets))
    return min(sum(cost[q, t] for q, t in enumerate(cols)) for cols in itertools.permutations(range(targets), queries))


@pytest.mark.parametrize(("queries", "targets"), [(6, 3), (5, 5), (7, 1), (3, 5)])
def test_matcher_equals_brute_force_assignment(queries: int, targets: int) -> None:
    gen = torch.Generator().manual_seed(queries * 10 + targets)
    matcher = HungarianMatcher(class_cost=2.0, l1_cost=5.0, giou_cost=2.0)
    logits = torch.randn(1, queries, 3, generator=gen)
    boxes = torch.rand(1, queries, 4, generator=gen) * 0.4 + 0.1
    target = {"labels": torch.randint(0, 3, (targets,), generator=gen),
              "boxes": torch.rand(targets, 4, generator=gen) * 0.4 + 0.1}
    (rows, cols), = matcher(logits, boxes, [target])
    cost = matcher.cost_matrix(logits[0], boxes[0], target["labels"], target["boxes"]).double().numpy()
    assert len(rows) == len(cols) == min(queries, targets)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)  # one-to-one
    assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(brute_force(cost), abs=1e-6)


def test_matcher_cost_terms_and_an_image_without_targets() -> None:
    matcher = HungarianMatcher(class_cost=0.0, l1_cost=1.0, giou_cost=0.0)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    target = {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.25, 0.2, 0.1, 0.1]])}
    cost = matcher.cost_matrix(torch.zeros(2, 1), boxes[0], target["labels"], target["boxes"])
    assert cost[:, 0].tolist() == pytest.approx([0.25 + 0.3 + 0.1 + 0.1, 0.05])  # L1 of (cx, cy, w, h)
    (rows, cols), = matcher(torch.zeros(1, 2, 1), boxes, [target])
    assert rows.tolist() == [1] and cols.tolist() == [0]
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    (rows, cols), = matcher(torch.zeros(1, 2, 1), boxes, [empty])
    assert rows.numel() == cols.numel() == 0


def test_matcher_signs_of_the_class_and_giou_costs() -> None:
    """Each cost alone prefers the right query: the one confident in the target's class, the one overlapping it."""
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]])
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])}
    logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])  # query 1 says class 1 (the target's), query 0 class 0
    (rows, _), = HungarianMatcher(class_cost=1.0, l1_cost=0.0, giou_cost=0.0)(logits[None], boxes[None], [target])
    assert rows.tolist() == [1]
    far_and_near = torch.tensor([[0.8, 0.8, 0.1, 0.1], [0.32, 0.3, 0.2, 0.2]])  # query 1 overlaps the target
    (rows, _), = HungarianMatcher(class_cost=0.0, l1_cost=0.0, giou_cost=1.0)(torch.zeros(1, 2, 2), far_and_near[None],
                                                                               [target])
    assert rows.tolist() == [1]


# ------------------------------------------------------------------------------------ deformable attention
SHAPES = [(5, 7), (3, 4), (2, 3), (1, 1)]  # odd sizes, a 1x1 level


def test_sampling_locations_follow_deformable_detr() -> None:
    """Point references move by offset / (level width, height); box references by offset / points x half the box."""
    torch.manual_seed(2)
    dim, heads, points = 8, 2, 3
    attention = MultiScaleDeformableAttention(dim, heads, len(SHAPES), points)
    with torch.no_grad():
        attention.sampling_offsets.weight.normal_(0, 0.5)
    query = torch.randn(1, 2, dim)
    with torch.no_grad():
        raw = attention.sampling_offsets(query).view(1, 2, heads, len(SHAPES), points, 2)
        point = torch.tensor([[[0.4, 0.6], [0.1, 0.9]]])
        locations, _ = attention.sampling(query, point, SHAPES)
        for level, (h, w) in enumerate(SHAPES):  # x offsets by the width, y offsets by the height
            expect_x = point[0, :, None, None, 0] + raw[0, :, :, level, :, 0] / w
            expect_y = point[0, :, None, None, 1] + raw[0, :, :, level, :, 1] / h
            torch.testing.assert_close(locations[0, :, :, level, :, 0], expect_x)
            torch.testing.assert_close(locations[0, :, :, level, :, 1], expect_y)
        box = torch.tensor([[[0.4, 0.6, 0.2, 0.4], [0.5, 0.5, 0.1, 0.3]]])
        locations, _ = attention.sampling(query, box, SHAPES)
        expect_x = box[0, :, None, None, None, 0] + raw[0, ..., 0] / points * box[0, :, None, None, None, 2] / 2
        expect_y = box[0, :, None, None, None, 1] + raw[0, ..., 1] / points * box[0, :, None, None, None, 3] / 2
        torch.testing.assert_close(locations[0, ..., 0], expect_x)
        torch.testing.assert_close(locations[0, ..., 1], expect_y)


def test_deformable_sampling_equals_naive_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    batch, queries, heads, head_dim, points = 2, 3, 2, 3, 3
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, tokens, heads, head_dim, generator=gen)
    # locations reach past the borders (-0.2 .. 1.2): zero padding must agree too
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=gen) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=gen)
    fast = deformable_sample(value, SHAPES, locations, weights)
    slow = deformable_sample_naive(value, SHAPES, locations, weights)
    assert fast.shape == (batch, queries, heads * head_dim)
    torch.testing.assert_close(fast.double(), slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reference_dims", [2, 4])
def test_deformable_attention_module_equals_naive_reference(reference_dims: int) -> None:
    torch.manual_seed(1)
    dim, heads, points = 12, 3, 2
    attention = MultiScaleDeformableAttention(dim, heads, len(SHAPES), points)
    with torch.no_grad():  # leave the zero-initialised offset/weight layers: give the query a real effect
        attention.sampling_offsets.weight.normal_(0, 0.5)
        attention.attention_weights.weight.normal_(0, 0.5)
    tokens = sum(h * w for h, w in SHAPES)
    query = torch.randn(2, 4, dim)
    value = torch.randn(2, tokens, dim)
    reference = torch.rand(2, 4, reference_dims) * 0.6 + 0.2
    padding = torch.zeros(2, tokens, dtype=torch.bool)
    padding[1, -5:] = True
    with torch.no_grad():
        out = attention(query, reference, value, SHAPES, padding)
        locations, weights = attention.sampling(query, reference, SHAPES)
        projected = attention.value_proj(value).masked_fill(padding[..., None], 0.0).view(2, tokens, heads, -1)
        expected = attention.output_proj(deformable_sample_naive(projected, SHAPES, locations, weights).float())
    assert torch.allclose(weights.sum(dim=(-1, -2)), torch.ones(2, 4, heads))  # softmax over levels x points
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------- losses
def confident_logits(labels_per_query: torch.Tensor, classes: int) -> torch.Tensor:
    """+20 for the query's class, -20 elsewhere; -1 in ``labels_per_query``: background (all -20)."""
    logits = torch.full((len(labels_per_query), classes), -20.0)
    fg = labels_per_query >= 0
    logits[fg.nonzero()[:, 0], labels_per_query[fg]] = 20.0
    return logits


def test_loss_is_zero_for_a_perfect_prediction() -> None:
    classes, queries = 3, 6
    targets = [{"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.1], [0.7, 0.6, 0.1, 0.3]])},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]  # an image with no boxes
    logits, boxes = [], []
    for target, slots in zip(targets, ([4, 1], [])):  # the targets sit in arbitrary query slots
        per_query = torch.full((queries,), -1, dtype=torch.int64)
        b = torch.rand(queries, 4) * 0.5 + 0.2  # background queries: any box
        for slot, label, box in zip(slots, target["labels"], target["boxes"]):
            per_query[slot] = label
            b[slot] = box
        logits.append(confident_logits(per_query, classes))
        boxes.append(b)
    layer = (torch.stack(logits), torch.stack(boxes))
    # denoising: 2 groups of (positive, negative) for up to 2 boxes: positives exact, negatives background
    meta = DenoisingMeta(groups=2, max_boxes=2)
    dn_labels = torch.full((2, meta.num_queries), -1, dtype=torch.int64)
    dn_boxes = torch.full((2, meta.num_queries, 4), 0.5)
    for g in range(2):
        dn_labels[0, g * 4:g * 4 + 2] = targets[0]["labels"]
        dn_boxes[0, g * 4:g * 4 + 2] = targets[0]["boxes"]
    dn_layer = (torch.stack([confident_logits(r, classes) for r in dn_labels]), dn_boxes)
    criterion = DetrCriterion(classes, HungarianMatcher(), aux_loss=True, denoising=True)
    losses = criterion(DetrOutputs(layers=[layer, layer], encoder=layer, denoising=[dn_layer, dn_layer],
                                   denoising_meta=meta), targets)
    assert set(losses) == {"loss_class", "loss_bbox", "loss_giou", "loss_aux", "loss_dn"}
    assert all(float(v) < 1e-4 for v in losses.values())  # fp32 rounding of GIoU, {k: float(v) for k, v in losses.items()}
    # and a wrong prediction is not free: swap the two boxes' classes
    wrong = (layer[0][:, [1, 0, 2, 3, 4, 5]], layer[1])
    assert float(sum(criterion(DetrOutputs(layers=[wrong]), targets).values())) > 1.0


def test_losses_are_normalised_by_the_number_of_boxes() -> None:
    criterion = DetrCriterion(1, HungarianMatcher(), aux_loss=False, l1_weight=1.0)
    target = {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    pred = (confident_logits(torch.tensor([0]), 1)[None], torch.tensor([[[0.6, 0.5, 0.2, 0.2]]]))
    one = criterion(DetrOutputs(layers=[pred]), [target])
    two = criterion(DetrOutputs(layers=[(pred[0].repeat(2, 1, 1), pred[1].repeat(2, 1, 1))]), [target, target])
    assert float(one["loss_bbox"]) == pytest.approx(0.1, abs=1e-6)
    assert float(two["loss_bbox"]) == pytest.approx(float(one["loss_bbox"]), abs=1e-6)  # mean per box
    assert set(one) == {"loss_class", "loss_bbox", "loss_giou"}  # no aux, no denoising: no such keys


# --------------------------------------------------------------------------------------------- denoising
def test_denoising_queries_and_attention_mask() -> None:
    torch.manual_seed(0)
    embed = torch.nn.Embedding(3, 8)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.1]])
    targets = [{"labels": torch.tensor([0, 2]), "boxes": boxes},
               {"labels": torch.tensor([1]), "boxes": boxes[:1]}]
    dn = build_denoising_queries(targets, embed, groups=3, label_noise=0.0, box_noise=0.4, matching=5)
    assert dn is not None and dn.meta == DenoisingMeta(3, 2) and dn.content.shape == (2, 12, 8)
    view = dn.boxes.view(2, 3, 4, 4)  # batch, group, [pos, pos, neg, neg], box
    for g in range(3):
        shift_pos = (box_convert(view[0, g, :2], "cxcywh", "xyxy") - box_convert(boxes, "cxcywh", "xyxy")).abs()
        shift_neg = (box_convert(view[0, g, 2:], "cxcywh", "xyxy") - box_convert(boxes, "cxcywh", "xyxy")).abs()
        half = boxes[:, 2:].repeat(1, 2) * 0.5 * 0.4
        assert (shift_pos <= half + 1e-6).all()  # positives: within box_noise x half the size
        # negatives: at least box_noise x half the size away, unless clipped at the image border
        assert ((shift_neg >= half - 1e-6) | (box_convert(view[0, g, 2:], "cxcywh", "xyxy") <= 1e-6)
                | (box_convert(view[0, g, 2:], "cxcywh", "xyxy") >= 1 - 1e-6)).all()
    assert torch.equal(dn.content[1, 1], torch.zeros(8))  # image 1 has 1 box: its second slot is padding
    mask = dn.attn_mask
    assert mask.shape == (17, 17)
    assert mask[12:, :12].all() and not mask[12:, 12:].any()  # matching queries never see denoising ones
    assert not mask[:4, :4].any() and mask[:4, 4:12].all() and not mask[:12, 12:].any()  # groups are apart
    assert torch.equal(attention_mask(1, 2, 1, torch.device("cpu")),
                       torch.tensor([[False, False, False], [False, False, False], [True, True, False]]))
    assert build_denoising_queries([{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}],
                                   embed, 3, 0.5, 1.0, 5) is None


# ------------------------------------------------------------------------------------------ whole model
def batch(channels: int, with_empty: bool = True) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (channels, 64, 80), generator=gen, dtype=torch.uint8),
              torch.randint(0, 256, (channels, 45, 70), generator=gen, dtype=torch.uint8)]  # sizes differ
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 30.0, 40.0], [50.0, 5.0, 58.0, 11.0]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros(0, 4) if with_empty else torch.tensor([[3.0, 3.0, 20.0, 30.0]]),
                "labels": torch.zeros(0, dtype=torch.int64) if with_empty else torch.tensor([2])}]
    return images, targets


@pytest.mark.parametrize("streams", ["dual", "single"])
def test_forward_train_and_eval_with_denoising(streams: str) -> None:
    extra = ["model.detector.detr.denoising.enabled=true", "model.detector.score_thresh=0.0",
             "model.detector.detections_per_img=7"] + (RGB_ONLY if streams == "single" else [])
    model = detr(*extra)
    config = load_config(None, [*TINY_DETR, *extra])
    keys = get_task("detect").loss_keys(config)
    assert keys == ("loss_class", "loss_bbox", "loss_giou", "loss_aux", "loss_dn")
    top = {k.split(".")[0] for k in model.state_dict()}
    assert top == {"backbone", "input_proj", "level_embed", "encoder", "decoder", "class_heads", "box_heads",
                   "proposals", "denoising"}
    assert any(k.startswith("backbone.encoder.streams.") for k in model.state_dict())
    images, targets = batch(model.layout.total_channels)
    for with_empty in (True, False):
        images, targets = batch(model.layout.total_channels, with_empty)
        model.train()
        losses = model(images, targets)
        assert tuple(losses) == keys and all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
        model.zero_grad()
        sum(losses.values()).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, missing  # every parameter takes part (DDP without find_unused_parameters)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, img in zip(out, images):
        assert len(o["boxes"]) == 7 and o["labels"].dtype == torch.int64  # score_thresh 0: the top 7
        assert o["labels"].min() >= 1 and o["labels"].max() <= 2
        assert (o["scores"][:-1] >= o["scores"][1:]).all()
        height, width = img.shape[1:]
        assert (o["boxes"][:, 0::2] <= width).all() and (o["boxes"][:, 1::2] <= height).all()
        assert (o["boxes"] >= 0).all()


def test_one_stage_without_refinement_or_aux_loss_and_resize_back() -> None:
    model = detr("model.detector.detr.two_stage=false", "model.detector.detr.box_refine=false",
                 "model.detector.detr.aux_loss=false", "model.detector.detr.extra_levels=2",
                 "model.detector.detr.encoder_layers=0", "model.detector.resize=shorter_side",
                 "model.detector.min_size=96", "model.detector.max_size=160", "model.detector.score_thresh=0.0")
    assert model.proposals is None and model.denoising is None and len(model.class_heads) == 1
    assert len(model.input_proj) == 6  # 4 levels + 2 extra stride-2 levels
    images, targets = batch(model.layout.total_channels, with_empty=False)
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_class", "loss_bbox", "loss_giou"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(images)
    for o, img in zip(out, images):  # predicted on the resized input, reported in the original's pixels
        assert len(o["boxes"]) == 40  # every (query, class) pair: 20 queries x 2 classes < 100
        assert float(o["boxes"][:, 2].max()) <= img.shape[2] + 1e-4 and float(o["boxes"][:, 3].max()) <= img.shape[1] + 1e-4
    with pytest.raises(ValueError, match="1..2"):
        model.train()(images, [{"boxes": torch.tensor([[1.0, 1, 5, 5]]), "labels": torch.tensor([3])}] * 2)


def test_two_stage_proposals_are_trained_without_aux_loss() -> None:
    """The proposals pick the decoder's queries: they get their loss (loss_enc) even with aux_loss off."""
    model = detr("model.detector.detr.aux_loss=false")
    config = load_config(None, [*TINY_DETR, "model.detector.detr.aux_loss=false"])
    assert get_task("detect").loss_keys(config) == ("loss_class", "loss_bbox", "loss_giou", "loss_enc")
    images, targets = batch(model.layout.total_channels, with_empty=False)
    model.train()
    losses = model(images, targets)
    assert tuple(losses) == ("loss_class", "loss_bbox", "loss_giou", "loss_enc") and float(losses["loss_enc"]) > 0
    sum(losses.values()).backward()
    grads = {n: float(p.grad.abs().sum()) for n, p in model.named_parameters() if n.startswith("proposals.")}
    # the box MLP's output layer starts at zero, so its hidden layers get no gradient in the very first step
    hidden = [n for n in grads if n.startswith("proposals.box_head.layers.") and not n.startswith(
        f"proposals.box_head.layers.{len(model.proposals.box_head.layers) - 1}.")]
    assert grads and all(g > 0 for n, g in grads.items() if n not in hidden), grads


def test_detection_cap_is_one_per_query_and_class() -> None:
    """The AI-TOD note reads detections_per_img: it must be the real cap, queries x classes when that is lower."""
    assert detr("model.detector.detections_per_img=300").detections_per_img == 20 * 2
    assert detr("model.detector.detections_per_img=7").detections_per_img == 7


def test_proposal_sizes_follow_the_level_strides() -> None:
    """Deformable DETR's 0.05 x 2^l proposal size is tied to the stride (0.05 at stride 8): stage 1 (stride 4)
    proposes 0.025 of the image, the extra level after stage 4 (stride 64) 0.4."""
    assert detr().level_strides == [4, 8, 16, 32, 64]
    assert detr("model.detector.detr.levels=[2,3]", "model.detector.detr.extra_levels=2").level_strides == [8, 16, 32, 64]


def test_score_threshold_and_zeroed_modalities() -> None:
    model = detr("model.detector.score_thresh=0.5").eval()
    images, _ = batch(model.layout.total_channels)
    with torch.no_grad():
        assert all(len(o["boxes"]) == 0 for o in model(images))  # untrained: every score near the 0.01 prior
    model.set_zero_modalities(["thermal"])
    assert model.zero_modalities == ["thermal"]


def test_bf16_autocast_keeps_the_losses_in_float32(one_thread: None) -> None:
    model = detr("model.detector.detr.denoising.enabled=true").train()
    images, targets = batch(model.layout.total_channels, with_empty=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_channels_last_and_ema_copy() -> None:
    from crossattentiondet.engine.ema import ModelEMA

    model = detr(*RGB_ONLY).to(memory_format=torch.channels_last).train()
    ema = ModelEMA(model, 0.9)
    images, targets = batch(3, with_empty=False)
    before = {k: v.clone() for k, v in ema.averaged.module.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sum(model(images, targets).values()).backward()
    optimizer.step()
    ema.update(model)
    changed = [k for k, v in ema.averaged.module.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("decoder.") for k in changed) and any(k.startswith("backbone.encoder.") for k in changed)


def test_optimizer_groups_and_freezing_see_the_encoder() -> None:
    config = load_config(None, [*TINY_DETR, "train.optimizer.type=adamw", "train.optimizer.backbone_lr_mult=0.1"])
    model = build_detector(config, 2, load_pretrained=False)
    optimizer = build_optimizer(model, config.train, 1e-4)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(1e-5) and lrs["heads"] == pytest.approx(1e-4)
    backbone = {id(p) for g in optimizer.param_groups if g["name"].startswith("backbone") for p in g["params"]}
    assert backbone == {id(p) for p in model.backbone.encoder.streams.parameters()}
    set_frozen_stages(model, [1, 2, 3, 4])
    assert not any(p.requires_grad for p in model.backbone.encoder.streams.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())


@pytest.mark.parametrize("two_stage", ["true", "false"])
def test_model_info_counts_the_detr_parts(two_stage: str) -> None:
    info = model_info(load_config(None, [*TINY_DETR, f"model.detector.detr.two_stage={two_stage}"]), size=(64, 48),
                      num_classes=2)
    parts = info["components"]
    assert {"stream_rgb", "stream_thermal+event", "input_proj", "encoder", "decoder", "class_heads",
            "box_heads", "level_embed"} <= set(parts) and ("proposals" in parts) == (two_stage == "true")
    assert sum(parts.values()) == info["total_params"]
    assert 0 < info["flops"]["backbone_gflops"] < info["flops"]["detector_gflops"]


def test_unknown_detr_key_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="model.detector.detr.num_querys"):
        load_config(None, [*TINY_DETR, "model.detector.detr.num_querys=10"])
    with pytest.raises(ConfigError, match="hidden_dim"):
        build_detector(load_config(None, [*TINY_DETR, "model.detector.detr.hidden_dim=18",
                                          "model.detector.detr.num_heads=2"]), 2, load_pretrained=False)


# ------------------------------------------------------------------------------------------- end to end
def bright_boxes(n: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """64x64 RGB frames, each with two bright rectangles on a dark ground; the channel says the class."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        img = np.full((3, 64, 64), 20, np.uint8)
        boxes, labels = [], []
        for _ in range(2):
            w, h = (int(v) for v in rng.integers(8, 24, 2))
            x, y = int(rng.integers(0, 64 - w)), int(rng.integers(0, 64 - h))
            label = int(rng.integers(1, 3))
            img[label - 1, y:y + h, x:x + w] = 230
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
        images.append(torch.from_numpy(img))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


@pytest.mark.slow
def test_tiny_detr_overfits_a_few_frames(one_thread: None) -> None:
    torch.manual_seed(0)
    model = detr(*RGB_ONLY, "model.mit.embed_dims=[16,16,24,32]", "model.detector.detr.levels=[1,2,3]",
                 "model.detector.detr.extra_levels=0", "model.detector.detr.denoising.enabled=true",
                 "model.detector.score_thresh=0.0")
    images, targets = bright_boxes(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    model.train()
    history = []
    for _ in range(100):
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        history.append(float(loss.detach()))
    assert np.mean(history[-10:]) < 0.6 * np.mean(history[:10])
    loader = [(images, [dict(t, image_id=i) for i, t in enumerate(targets)],
               [{"stem": f"f{i}", "image_id": i, "height": 64, "width": 64} for i in range(len(images))])]
    metrics = evaluate(model, loader, "cpu", class_names=["a", "b"]).metrics
    assert metrics["mAP_50"] > 0.5, metrics


@pytest.fixture
def detr_data(trees) -> Path:
    rng = np.random.default_rng(1)
    frames = {f"f{i:03d}": [(int(rng.integers(0, 2)), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)),
                             0.3, 0.4)] for i in range(8)}
    return trees.npy("data", frames=frames, size=(64, 64), classes=["person", "car"])


@pytest.mark.slow
def test_train_run_with_the_detr_head(detr_data: Path, tmp_path: Path) -> None:
    from crossattentiondet import api

    overrides = [*TINY_DETR, "model.detector.detr.denoising.enabled=true", f"data.root={detr_data}",
                 f"output.root={tmp_path / 'runs'}", "name=detr", "data.loader.num_workers=0",
                 "data.split.group_by=none", "data.split.train=0.5", "data.split.val=0.25", "data.split.test=0.25",
                 "train.batch_size=2", "train.epochs=2", "train.lr=1e-4", "train.optimizer.type=adamw",
                 "train.ema.enabled=true", "eval.speed=false", "eval.robustness=false", "eval.panels=0",
                 "output.tensorboard=false"]
    result = api.train(None, overrides)
    run = result.run_dir
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2 and all(float(r["loss"]) > 0 and r["loss_giou"] and r["loss_dn"] for r in rows)
    final = json.loads((run / "final_results.json").read_text())
    assert math.isfinite(final["results"]["mAP"]) or final["results"]["mAP"] is None
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "predictions_test.json").is_file()
