"""Segmentation model: timm encoder, U-Net / MLP decoders, losses, the Segmenter and build_segmenter."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from crossattentiondet.config import ConfigError, FreezeConfig, SegLossConfig, build_config
from crossattentiondet.engine.freeze import apply_freeze
from crossattentiondet.errors import DataError
from crossattentiondet.models.detector import InputLayout, build_detector, normalize_input
from crossattentiondet.models.timm_encoder import TimmEncoder
from crossattentiondet.segmentation.decoders import MLPDecoder, UNetDecoder
from crossattentiondet.segmentation.losses import binary_seg_loss, seg_loss_keys, semantic_seg_loss
from crossattentiondet.segmentation.model import Segmenter, build_segmenter

TINY_MIT = ["model.backbone=mit_b0", "model.mit.embed_dims=[8,16,32,64]", "model.mit.depths=[1,1,1,1]",
            "model.mit.num_heads=[1,2,2,4]", "model.drop_path_rate=0"]
TIMM = "edgenext_xx_small"


def seg_config(*overrides: str):
    return build_config({}, ["task=segment", *TINY_MIT, *overrides])


def raw_batch(b: int = 2, size: tuple[int, int] = (64, 64), channels: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (b, channels, *size), dtype=torch.uint8)


def square_mask(b: int = 2, size: int = 64) -> torch.Tensor:
    mask = torch.zeros(b, size, size, dtype=torch.uint8)
    mask[:, 20:44, 12:40] = 1
    return mask


def targets(mask: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [{"mask": m} for m in mask]


# ------------------------------------------------------------------------------------------- decoders
@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("out", [1, 5])
def test_unet_decoder_shapes(out: int, deep: bool) -> None:
    feats = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip((8, 16, 32, 64), (4, 8, 16, 32))]
    dec = UNetDecoder([8, 16, 32, 64], None, 16, out, deep)
    dec.train()
    result = dec(feats, (64, 64))
    if deep:
        logits, deep_logits = result
        assert [tuple(d.shape) for d in deep_logits] == [(2, out, 4, 4), (2, out, 8, 8), (2, out, 16, 16)]
    else:
        logits = result
    assert tuple(logits.shape) == (2, out, 64, 64)
    assert tuple(dec.eval()(feats, (64, 64)).shape) == (2, out, 64, 64)  # eval: logits only


def test_unet_decoder_follows_the_seed_widths() -> None:
    dec = UNetDecoder([80, 160, 288, 584], None, 64, 1, deep_supervision=True)
    assert [b.convs[0][0].in_channels for b in dec.blocks] == [584 + 288, 288 + 160, 160 + 80, 80]
    assert [b.convs[1][0].out_channels for b in dec.blocks] == [288, 160, 80, 64]
    assert (dec.head[0][0].in_channels, dec.head[0][0].out_channels, dec.head[1].out_channels) == (64, 32, 1)
    assert [h.in_channels for h in dec.deep_heads] == [288, 160, 80]
    with pytest.raises(ConfigError, match="unet_channels"):
        UNetDecoder([80, 160, 288, 584], [64, 32], 64, 1)


@pytest.mark.parametrize("out", [1, 4])
def test_mlp_decoder_shapes(out: int) -> None:
    feats = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip((8, 16, 32, 64), (4, 8, 16, 32))]
    assert tuple(MLPDecoder([8, 16, 32, 64], 16, out)(feats, (64, 64)).shape) == (2, out, 64, 64)


# --------------------------------------------------------------------------------------------- losses
def test_binary_loss_perfect_prediction_is_zero_and_wrong_is_not() -> None:
    mask = square_mask()
    good = (mask.float()[:, None] * 2 - 1) * 30
    loss = binary_seg_loss(good, mask, None, SegLossConfig())
    assert set(loss) == {"loss_bce", "loss_iou", "loss_edge"}
    for key, value in loss.items():
        assert value.item() < 1e-5, key
    bad = binary_seg_loss(-good, mask, None, SegLossConfig())
    assert bad["loss_bce"] > 10 and bad["loss_iou"] > 0.9
    assert bad["loss_edge"] < 1e-5  # the inverted map has the same edges
    assert binary_seg_loss(torch.zeros_like(good), mask, None, SegLossConfig())["loss_edge"] > 0.1  # no edges
    # weights scale their term
    weighted = binary_seg_loss(-good, mask, None, SegLossConfig(bce=2, iou=3, edge=0))
    torch.testing.assert_close(weighted["loss_bce"], 2 * bad["loss_bce"])
    torch.testing.assert_close(weighted["loss_iou"], 3 * bad["loss_iou"])
    assert weighted["loss_edge"] == 0


def test_ignored_pixels_change_no_loss_term() -> None:
    torch.manual_seed(0)
    mask = square_mask()
    mask[:, 16:32, 16:32] = 255  # 4x4-aligned: whole cells of the 1/4 deep head are ignored
    logits = torch.randn(2, 1, 64, 64)
    deep = [torch.randn(2, 1, 16, 16), torch.randn(2, 1, 8, 8)]
    other, other_deep = logits.clone(), [d.clone() for d in deep]
    other[:, :, 16:32, 16:32] = 50.0  # anything inside the ignored region
    other_deep[0][:, :, 4:8, 4:8] = -50.0
    a = binary_seg_loss(logits, mask, deep, SegLossConfig())
    b = binary_seg_loss(other, mask, other_deep, SegLossConfig())
    assert set(a) == {"loss_bce", "loss_iou", "loss_edge", "loss_deep"}
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    # semantic: CE, Dice and deep CE ignore 255 the same way
    sem_mask = mask.long()
    sem_mask[:, 40:, :] = 2
    logits3, deep3 = torch.randn(2, 3, 64, 64), [torch.randn(2, 3, 16, 16)]
    other3, other_deep3 = logits3.clone(), [deep3[0].clone()]
    other3[:, :, 16:32, 16:32] = torch.randn(2, 3, 16, 16) * 20
    other_deep3[0][:, :, 4:8, 4:8] = 30.0
    weights = SegLossConfig(dice=0.5)
    a = semantic_seg_loss(logits3, sem_mask, deep3, weights)
    b = semantic_seg_loss(other3, sem_mask, other_deep3, weights)
    assert set(a) == {"loss_ce", "loss_dice", "loss_deep"}
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_all_ignored_batch_is_finite_and_bad_values_are_named() -> None:
    mask = torch.full((1, 16, 16), 255, dtype=torch.uint8)
    loss = binary_seg_loss(torch.randn(1, 1, 16, 16), mask, [torch.randn(1, 1, 4, 4)], SegLossConfig())
    assert all(torch.isfinite(v) for v in loss.values())
    assert semantic_seg_loss(torch.randn(1, 3, 16, 16), mask.long(), None, SegLossConfig())["loss_ce"] == 0
    mask[0, 0, 0] = 7
    with pytest.raises(DataError, match=r"mask values \[7\]"):
        binary_seg_loss(torch.randn(1, 1, 16, 16), mask, None, SegLossConfig())
    with pytest.raises(DataError, match=r"0\.\.2"):
        semantic_seg_loss(torch.randn(1, 3, 16, 16), mask.long(), None, SegLossConfig())


def test_semantic_perfect_prediction_and_fp32_under_autocast() -> None:
    mask = square_mask().long()
    mask[:, :8] = 2
    good = torch.nn.functional.one_hot(mask, 3).permute(0, 3, 1, 2).float() * 40
    loss = semantic_seg_loss(good, mask, None, SegLossConfig(dice=1.0))
    assert loss["loss_ce"] < 1e-6 and loss["loss_dice"] < 1e-3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = binary_seg_loss(torch.randn(2, 1, 64, 64).bfloat16(), square_mask(),
                              [torch.randn(2, 1, 16, 16).bfloat16()], SegLossConfig())
    assert all(v.dtype == torch.float32 for v in low.values())


# ------------------------------------------------------------------------------------------ segmenter
@pytest.mark.parametrize(("decoder", "classes", "deep"), [
    ("unet", 2, False), ("unet", 2, True), ("unet", 4, True), ("mlp", 2, False), ("mlp", 4, False)])
def test_segmenter_outputs_and_loss_keys(decoder: str, classes: int, deep: bool) -> None:
    torch.manual_seed(0)
    cfg = seg_config("model.streams=[[rgb,thermal]]", f"model.seg.decoder={decoder}",
                     f"model.seg.deep_supervision={str(deep).lower()}", "model.seg.head_channels=16",
                     "model.seg.mlp_dim=16", "model.seg.loss.dice=0.5")
    model = build_segmenter(cfg, classes)
    assert model.binary == (classes == 2)
    x = raw_batch()
    logits = model.eval()(list(x))
    assert tuple(logits.shape) == (2, 1 if classes == 2 else classes, 64, 64) and logits.dtype == torch.float32
    probs = Segmenter.probabilities(logits)
    if classes == 2:
        torch.testing.assert_close(probs, torch.sigmoid(logits))
    else:
        torch.testing.assert_close(probs.sum(1), torch.ones(2, 64, 64))
    mask = square_mask() if classes == 2 else torch.randint(0, classes, (2, 64, 64), dtype=torch.uint8)
    loss = model.train()(x, targets(mask))
    assert tuple(loss) == seg_loss_keys(classes == 2, cfg.model.seg)
    assert ("loss_deep" in loss) == deep


def test_segmenter_gradients_reach_encoder_and_decoder() -> None:
    torch.manual_seed(0)
    model = build_segmenter(seg_config("model.streams=[[rgb,thermal]]", "model.seg.deep_supervision=true",
                                       "model.seg.head_channels=16"), 2).train()
    loss = model(raw_batch(), targets(square_mask()))
    sum(loss.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing[:6]


def test_dual_stream_frm_ffm_segmenter() -> None:
    torch.manual_seed(0)
    cfg = seg_config("model.streams=[[rgb],[thermal]]", "model.fusion.type=frm_ffm", "model.seg.head_channels=16")
    model = build_segmenter(cfg, 2)
    assert len(model.backbone.encoder.streams) == 2 and len(model.backbone.encoder.fusions) == 4
    assert model.backbone.encoder.streams[1].in_chans == 1
    loss = model.train()(raw_batch(), targets(square_mask()))
    sum(loss.values()).backward()
    assert model.backbone.encoder.fusions[0].parameters().__next__().grad is not None
    # odd sizes (not multiples of 32) still give logits at the input size
    assert tuple(model.eval()(raw_batch(1, (70, 50))).shape) == (1, 1, 70, 50)


def test_zero_modalities_change_the_output() -> None:
    torch.manual_seed(0)
    model = build_segmenter(seg_config("model.streams=[[rgb,thermal]]", "model.zero_modalities=[thermal]",
                                       "model.seg.head_channels=16"), 2).eval()
    assert model.zero_modalities == ["thermal"]
    a = raw_batch(1)
    b = a.clone()
    b[:, 3] = 255 - b[:, 3]  # thermal only
    with torch.no_grad():
        za, zb = model(a), model(b)
        model.set_zero_modalities([])
        fa, fb = model(a), model(b)
    torch.testing.assert_close(za, zb)  # zeroed: thermal cannot matter
    assert not torch.allclose(fa, fb) and not torch.allclose(za, fa)
    with pytest.raises(ValueError, match="depth"):
        model.set_zero_modalities(["depth"])


def test_normalize_input_batch_matches_detector_per_image() -> None:
    cfg = seg_config()
    layout = InputLayout.from_config(cfg)
    x = raw_batch(2, (8, 8))
    batch = normalize_input(x, layout, [3])
    det = build_detector(build_config({}, [*TINY_MIT]), 1)
    det.set_zero_modalities(["thermal"])
    for i in range(2):
        torch.testing.assert_close(batch[i], det.transform.normalize(x[i]))
    assert (batch[:, 3] == 0).all()
    with pytest.raises(ValueError, match="4 channels, the model expects 5"):
        normalize_input(x[:, :4], layout)


def test_channels_last_model_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    model = build_segmenter(seg_config("model.streams=[[rgb,thermal]]", "model.seg.head_channels=16"), 2).eval()
    x = raw_batch(1)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_build_segmenter_config_errors() -> None:
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_segmenter(seg_config(), 1)
    with pytest.raises(ConfigError, match="decoder=unet"):
        build_segmenter(seg_config("model.seg.decoder=mlp", "model.seg.deep_supervision=true"), 2)
    with pytest.raises(ConfigError, match="timm backbones run one stream"):
        build_segmenter(seg_config(f"model.backbone=timm:{TIMM}", "model.streams=[[rgb],[thermal]]"), 2)


# ------------------------------------------------------------------------------------------------ timm
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_timm_encoder_local_weights_and_in_chans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    _no_network(monkeypatch)
    torch.manual_seed(0)
    reference = timm.create_model(TIMM, pretrained=False)
    path = tmp_path / "edgenext.pth"
    torch.save(reference.state_dict(), path)
    ref_state = {k.replace("_", "."): v for k, v in reference.state_dict().items()}
    enc3 = TimmEncoder(TIMM, 3, path, 0.1)
    state = enc3.streams[0].body.state_dict()
    assert len(state) > 100
    for key, value in state.items():
        torch.testing.assert_close(value, ref_state[key.replace("_", ".")], msg=key)
    enc4 = TimmEncoder(TIMM, 4, path, 0.1)
    stem, rgb = enc4.streams[0].body.stem_0.weight, reference.stem[0].weight
    assert stem.shape[1] == 4
    # timm's adapt_input_conv: RGB filters repeated over the 4 channels, scaled by 3 / 4
    torch.testing.assert_close(stem, torch.cat((rgb, rgb[:, :1]), dim=1) * 0.75)
    assert enc4.out_channels == [24, 48, 88, 168]
    feats = enc4(torch.randn(1, 4, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 64 // s) for c, s in zip(enc4.out_channels, (4, 8, 16, 32))]
    # a file of another layout is named, not silently half-loaded
    torch.save({f"backbone.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "prefixed.pth")
    with pytest.raises(ConfigError, match="prefixed.pth"):
        TimmEncoder(TIMM, 3, tmp_path / "prefixed.pth")
    partial = {k: v for k, v in reference.state_dict().items() if not k.startswith("stages.3")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match=r"encoder tensors are not in the file \(e\.g\. stages\.3"):
        TimmEncoder(TIMM, 3, tmp_path / "partial.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        TimmEncoder(TIMM, 3, tmp_path / "missing.pth")


def test_timm_names_and_levels_are_checked() -> None:
    with pytest.raises(ConfigError, match="close matches: edgenext_xx_small"):
        TimmEncoder("edgenext_xx_smal", 3)
    with pytest.raises(ConfigError, match="no downloads"):
        TimmEncoder("hf-hub:timm/edgenext_xx_small.in1k", 3)
    with pytest.raises(ConfigError, match=r"reductions \[16, 16, 16"):
        TimmEncoder("test_vit_relpos", 3)  # a plain ViT: every map at stride 16
    # ResNet's default levels include stride 2: only the 4 at strides 4..32 are kept
    import timm

    channels = timm.create_model("test_resnet", features_only=True).feature_info.channels()
    resnet = TimmEncoder("test_resnet", 3)
    assert resnet.out_channels == channels[1:]
    assert [f.shape[-1] for f in resnet(torch.randn(1, 3, 64, 64))] == [16, 8, 4, 2]


def test_timm_segmenter_from_config_trains_and_freezes_by_stage(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    path = tmp_path / "w.pth"
    torch.save(timm.create_model(TIMM, pretrained=False).state_dict(), path)
    cfg = seg_config(f"model.backbone=timm:{TIMM}", "model.streams=[[rgb,thermal]]", f"model.pretrained={path}",
                     "model.seg.deep_supervision=true", "model.seg.head_channels=16")
    model = build_segmenter(cfg, 2)
    stream = model.backbone.encoder.streams[0]
    assert stream.body.stem_0.weight.shape[1] == 4
    loss = model.train()(raw_batch(), targets(square_mask()))
    assert tuple(loss) == ("loss_bce", "loss_iou", "loss_edge", "loss_deep")
    sum(loss.values()).backward()
    assert stream.body.stem_0.weight.grad is not None
    # stages partition the timm modules (stem in stage 1), so the engine's staged freezing applies
    parts = [m for s in (1, 2, 3, 4) for m in stream.stage_modules(s)]
    assert len(parts) == len(list(stream.body.children())) and len({id(m) for m in parts}) == len(parts)
    apply_freeze(model, FreezeConfig(epochs=2, mode="progressive"), 2)  # stages 1-3 frozen, 4 trains
    assert not stream.body.stem_0.weight.requires_grad and stream.body.stages_3.downsample[0].weight.requires_grad
    # without load_pretrained the file is not read
    path.unlink()
    assert isinstance(build_segmenter(cfg, 2, load_pretrained=False), Segmenter)


def test_detector_runs_on_a_timm_encoder() -> None:
    torch.manual_seed(0)
    cfg = build_config({"model": {"detector": {"fpn_channels": 16, "box_head_dim": 32}}},
                       [f"model.backbone=timm:{TIMM}", "model.streams=[[rgb,thermal]]"])
    model = build_detector(cfg, 1).eval()
    with torch.no_grad():
        out = model([raw_batch(1)[0]])
    assert set(out[0]) == {"boxes", "labels", "scores"}
