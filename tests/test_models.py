"""Model library: MiT variants, fusion modules and placements, flows, detector variants."""

from __future__ import annotations

import pytest
import torch

from crossattentiondet.config import FusionConfig, build_config
from crossattentiondet.models import (
    FUSION_REGISTRY,
    DualStreamEncoder,
    FusionPlan,
    MixTransformer,
    build_detector,
    build_fusion,
    mit_spec,
)
from crossattentiondet.models.fusion.cssa import CSSAFusion
from crossattentiondet.models.fusion.gaff import GAFFFusion

TINY = {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4]}
PLACEMENTS = [[1], [2], [3], [4], [2, 3], [3, 4], [2, 3, 4], [1, 2, 3, 4]]
FUSIONS = sorted(FUSION_REGISTRY)


def tiny_spec():
    return mit_spec("mit_b0", **TINY)


def tiny_detector_config(**model):
    tree = {
        "model": {
            "mit": TINY,
            "drop_path_rate": 0.1,
            "detector": {"fpn_channels": 16, "box_head_dim": 32, "anchor_sizes": [[8], [16], [32], [64], [128]],
                         "rpn": {"batch_size_per_image": 32, "pre_nms_top_n_train": 100, "post_nms_top_n_train": 50,
                                 "pre_nms_top_n_test": 100, "post_nms_top_n_test": 50},
                         "roi": {"batch_size_per_image": 32}},
            **model,
        }
    }
    return build_config(tree)


def assert_all_grads(module: torch.nn.Module, what: str) -> None:
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"{what}: no gradient reaches {missing[:6]}"


@pytest.mark.parametrize("backbone", ["mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5"])
def test_every_backbone_forward_and_backward(backbone: str) -> None:
    torch.manual_seed(0)
    spec = mit_spec(backbone)
    stream = MixTransformer(spec, in_chans=3, drop_path_rate=0.0)
    x = torch.randn(1, 3, 32, 32)
    outs = stream(x)
    assert [tuple(o.shape) for o in outs] == [(1, spec.embed_dims[i], 32 // s, 32 // s) for i, s in enumerate((4, 8, 16, 32))]
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    assert_all_grads(stream, backbone)
    depth = sum(len(getattr(stream, f"block{i}")) for i in range(1, 5))
    assert depth == sum(spec.depths)


@pytest.mark.parametrize("flow", ["separate", "fused"])
@pytest.mark.parametrize("stages", PLACEMENTS, ids=lambda s: "s" + "".join(map(str, s)))
@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_placements_and_flows(fusion: str, stages: list[int], flow: str) -> None:
    torch.manual_seed(0)
    cfg = FusionConfig(type=fusion, stages=stages, other="add", flow=flow)
    plan = FusionPlan.from_config(cfg)
    enc = DualStreamEncoder(tiny_spec(), (3, 2), plan, cfg, drop_path_rate=0.0)
    expected = [fusion if s in stages else "add" for s in (1, 2, 3, 4)]
    assert plan.modules == tuple(expected)
    # only the modules of the plan are built, one per stage
    assert [type(m) for m in enc.fusions] == [FUSION_REGISTRY[name] for name in expected]
    x1, x2 = torch.randn(2, 3, 64, 64), torch.randn(2, 2, 64, 64)
    outs = enc(x1, x2)
    assert [tuple(o.shape) for o in outs] == [(2, c, 64 // s, 64 // s) for c, s in zip(TINY["embed_dims"], (4, 8, 16, 32))]
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    assert_all_grads(enc, f"{fusion} at {stages} ({flow})")


def test_flows_differ_and_fused_flow_feeds_both_streams() -> None:
    torch.manual_seed(0)
    x1, x2 = torch.randn(1, 3, 64, 64), torch.randn(1, 2, 64, 64)
    results = {}
    for flow in ("separate", "fused"):
        torch.manual_seed(1)
        cfg = FusionConfig(type="concat", stages=[1, 2, 3, 4], flow=flow)
        enc = DualStreamEncoder(tiny_spec(), (3, 2), FusionPlan.from_config(cfg), cfg, 0.0).eval()
        with torch.no_grad():
            results[flow] = enc(x1, x2)
    torch.testing.assert_close(results["separate"][0], results["fused"][0])  # stage 1 sees the same inputs
    assert not torch.allclose(results["separate"][1], results["fused"][1])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_same_seed_same_output(fusion: str) -> None:
    def run() -> list[torch.Tensor]:
        torch.manual_seed(3)
        cfg = FusionConfig(type=fusion, stages=[1, 2, 3, 4])
        enc = DualStreamEncoder(tiny_spec(), (3, 2), FusionPlan.from_config(cfg), cfg, 0.1).eval()
        x = torch.Generator().manual_seed(5)
        with torch.no_grad():
            return enc(torch.randn(1, 3, 32, 32, generator=x), torch.randn(1, 2, 32, 32, generator=x))

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_frm_ffm_parameter_formula() -> None:
    for c, heads in ((64, 1), (320, 5)):
        module = build_fusion("frm_ffm", c, heads, FusionConfig())
        assert sum(p.numel() for p in module.parameters()) == 43 * c * c + 35 * c + 2


def test_cssa_eca_weights_learn() -> None:
    torch.manual_seed(0)
    module = CSSAFusion(16, switching_thresh=0.5, kernel_size=3)
    x1, x2 = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    fused, _, _ = module(x1, x2)
    (fused * torch.randn_like(fused)).sum().backward()
    for eca in (module.eca1, module.eca2):
        assert eca.conv.weight.grad is not None and eca.conv.weight.grad.abs().sum() > 0
    assert module.eca1.conv.weight.shape[-1] == 3
    assert CSSAFusion(16, kernel_size=5).eca1.conv.weight.shape[-1] == 5


def test_cssa_threshold_controls_switching() -> None:
    torch.manual_seed(0)
    x1, x2 = torch.randn(2, 16, 8, 8) + torch.randn(2, 16, 1, 1), torch.randn(2, 16, 8, 8) + torch.randn(2, 16, 1, 1)
    modules = {t: CSSAFusion(16, switching_thresh=t) for t in (0.0, 0.3, 0.7, 1.0)}
    for m in modules.values():
        m.load_state_dict(modules[0.0].state_dict())
    fractions = {t: m.switch_fraction(x1, x2) for t, m in modules.items()}
    assert fractions[0.0] == (0.0, 0.0)
    assert sum(fractions[0.3]) < sum(fractions[0.7]) <= sum(fractions[1.0])
    # a channel goes one way at most: the two sides hand over disjoint channels, together every channel
    # whose weights differ at threshold 1
    assert abs(sum(fractions[1.0]) - 1.0) < 1e-6
    with torch.no_grad():
        out = {t: m(x1, x2)[0] for t, m in modules.items()}
    # the study's phase-2 pair must not be the same model (it was: the literal rule made "switch all" == "none")
    assert (out[0.3] - out[0.7]).abs().max() > 1e-3
    assert (out[0.0] - out[1.0]).abs().max() > 1e-3


def test_cssa_switched_channel_is_the_better_modality() -> None:
    torch.manual_seed(1)
    module = CSSAFusion(8, switching_thresh=1.0)
    x1, x2 = torch.randn(1, 8, 4, 4) + 1.0, torch.randn(1, 8, 4, 4) - 1.0
    with torch.no_grad():
        w1, w2 = module.eca1(x1), module.eca2(x2)
        r1, r2 = x1 * w1, x2 * w2
        better = torch.where(w1 >= w2, r1, r2)  # every channel decided by the larger weight
        both = torch.cat((better, better), dim=1)
        expected = better * (torch.sigmoid(both.mean(1, keepdim=True)) * torch.sigmoid(both.amax(1, keepdim=True)))
        torch.testing.assert_close(module(x1, x2)[0], expected)
        none = CSSAFusion(8, switching_thresh=0.0)
        none.load_state_dict(module.state_dict())
        both = torch.cat((r1, r2), dim=1)
        gate = torch.sigmoid(both.mean(1, keepdim=True)) * torch.sigmoid(both.amax(1, keepdim=True))
        torch.testing.assert_close(none(x1, x2)[0], 0.5 * (r1 + r2) * gate)


def test_gaff_inter_shared_really_shares() -> None:
    def n(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    c = 32
    unshared, shared = GAFFFusion(c, 4, inter_shared=False), GAFFFusion(c, 4, inter_shared=True)
    assert n(unshared) - n(shared) == 2 * c * c  # one 2C -> C conv fewer
    assert n(GAFFFusion(c, 4, merge_bottleneck=True)) - n(unshared) == c * c + 2 * c
    assert n(GAFFFusion(c, 8)) < n(unshared)
    torch.manual_seed(0)
    x1, x2 = torch.randn(1, c, 4, 4), torch.randn(1, c, 4, 4)
    fused, _, _ = shared(x1, x2)
    fused.sum().backward()
    assert shared.inter2 is None and shared.inter1.weight.grad.abs().sum() > 0


def _targets(n: int, size: int = 64):
    return [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 30.0]]),
             "labels": torch.tensor([1, 2])} for _ in range(n)]


@pytest.mark.parametrize("streams", [[["rgb"], ["thermal", "event"]], [["rgb", "thermal", "event"]], [["thermal"]],
                                     [["rgb", "event"], ["thermal"]]],
                         ids=["dual", "early_fusion", "single_modality", "custom_assignment"])
def test_detector_variants_train_and_infer(streams) -> None:
    torch.manual_seed(0)
    # every labelled anchor is sampled, so each FPN level provably receives gradient
    cfg = build_config({**tiny_detector_config(streams=streams).model_dump(mode="json")})
    cfg.model.detector.rpn.batch_size_per_image = 100000
    cfg.model.detector.rpn.pre_nms_top_n_train = 100000
    model = build_detector(cfg, num_classes=2)
    images = [torch.randint(0, 256, (5, 128, 128), dtype=torch.uint8) for _ in range(2)]
    losses = model(images, _targets(2))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    used = model.backbone.encoder
    assert_all_grads(used, f"encoder {streams}")
    assert_all_grads(model.backbone.fpn, "fpn")
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}


def test_detector_native_resolution_and_resize_policy() -> None:
    model = build_detector(tiny_detector_config(), num_classes=1).eval()
    image = torch.randint(0, 256, (5, 48, 80), dtype=torch.uint8)
    batch, _ = model.transform([image])
    assert batch.image_sizes == [(48, 80)]  # native: no upscaling
    resized = build_detector(tiny_detector_config(detector={"resize": "shorter_side", "min_size": 96, "max_size": 200,
                                                            "fpn_channels": 16, "box_head_dim": 32}), 1).eval()
    batch, _ = resized.transform([image])
    assert batch.image_sizes == [(96, 160)]


def test_normalisation_per_modality_and_uint16() -> None:
    cfg = build_config({"data": {"modalities": [
        {"name": "rgb", "channels": 3, "source": [0, 1, 2], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        {"name": "thermal", "channels": 1, "source": [3], "mean": [0.2], "std": [0.1], "scale": 4095},
    ]}, "model": {"streams": [["rgb"], ["thermal"]], "mit": TINY}})
    model = build_detector(cfg, 1)
    image = torch.zeros(4, 2, 2, dtype=torch.uint16)
    image[:3] = 255
    image[3] = 4095
    out = model.transform.normalize(image)
    # rgb: uint8 values promoted to uint16 would be misread without explicit scales; here rgb has no scale,
    # so its dtype max (65535 for uint16) applies, thermal uses its explicit 4095
    torch.testing.assert_close(out[3], torch.full((2, 2), (1.0 - 0.2) / 0.1))
    image8 = torch.full((4, 2, 2), 255, dtype=torch.uint8)
    torch.testing.assert_close(model.transform.normalize(image8)[0], torch.full((2, 2), (1.0 - 0.5) / 0.25))


def test_zeroed_modality_makes_output_independent_of_it() -> None:
    torch.manual_seed(0)
    cfg = tiny_detector_config(zero_modalities=["thermal"])
    model = build_detector(cfg, 1).eval()
    assert model.zero_modalities == ["thermal"]
    a = torch.randint(0, 256, (5, 64, 64), dtype=torch.uint8)
    b = a.clone()
    b[3] = 255 - b[3]  # change thermal only
    with torch.no_grad():
        fa = model.backbone(model.transform([a])[0].tensors)
        fb = model.backbone(model.transform([b])[0].tensors)
    torch.testing.assert_close(fa["0"], fb["0"])
    model.set_zero_modalities([])
    with torch.no_grad():
        fb2 = model.backbone(model.transform([b])[0].tensors)
    assert not torch.allclose(fa["0"], fb2["0"])
    with pytest.raises(ValueError, match="depth"):
        model.set_zero_modalities(["depth"])


def test_gradient_checkpointing_matches_plain_gradients() -> None:
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        stream = MixTransformer(tiny_spec(), 3, drop_path_rate=0.0, grad_checkpointing=ckpt)
        x = torch.randn(1, 3, 32, 32, requires_grad=True)
        sum(o.sum() for o in stream(x)).backward()
        grads.append(stream.block2[0].attn.q.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_drop_path_is_stochastic_in_training_only() -> None:
    torch.manual_seed(0)
    stream = MixTransformer(tiny_spec(), 3, drop_path_rate=0.5)
    assert stream.block4[0].drop_path.prob == pytest.approx(0.5)  # linearly increasing to the last block
    assert stream.block1[0].drop_path.prob == 0.0
    x = torch.randn(4, 3, 32, 32)
    stream.train()
    a, b = stream(x)[-1], stream(x)[-1]
    assert not torch.allclose(a, b)
    stream.eval()
    torch.testing.assert_close(stream(x)[-1], stream(x)[-1])


def test_bad_head_count_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="divisible"):
        mit_spec("mit_b0", embed_dims=[10, 16, 24, 32], num_heads=[3, 2, 2, 4])


def test_frm_ffm_initialised_as_the_original() -> None:
    """Linears trunc-normal std 0.02 with zero bias (CMX / original), not PyTorch's fan-in uniform."""
    torch.manual_seed(0)
    module = build_fusion("frm_ffm", 128, 2, FusionConfig())
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    for lin in linears:
        assert abs(lin.weight.std().item() - 0.02) < 0.004
        assert lin.bias is None or torch.count_nonzero(lin.bias) == 0


def test_ffm_softmax_not_saturated_at_init() -> None:
    """At 160x128 (the demo's frames) PyTorch's default init saturated most stage-1 FFM softmax columns."""
    from crossattentiondet.models.fusion.frm_ffm import ffm_softmax_saturation

    torch.manual_seed(0)
    cfg = FusionConfig(type="frm_ffm", stages=[1, 2, 3, 4])
    spec = mit_spec("mit_b0", embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])
    enc = DualStreamEncoder(spec, (3, 2), FusionPlan.from_config(cfg), cfg, 0.0).eval()
    x1, x2 = torch.randn(2, 3, 128, 160), torch.randn(2, 2, 128, 160)
    shares = ffm_softmax_saturation(enc, x1, x2)
    assert len(shares) == 4 and max(shares) < 0.05, shares
