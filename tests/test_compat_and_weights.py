"""Original-code compatibility, pretrained MiT weights, model-info and convert-original commands."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from crossattentiondet.cli import main
from crossattentiondet.compat import load_original_encoder, original_detector_config
from crossattentiondet.config import ConfigError, build_config, load_config
from crossattentiondet.models import MixTransformer, build_detector, mit_spec
from crossattentiondet.models.weights import load_pretrained_encoder

# small copies of shared/reference/original_tiny (written by the original code base); its 7 MB encoder
# weights are not committed and are read from the shared reference directory
REFERENCE = Path(__file__).parent / "fixtures" / "original_tiny"


def _reference_weights() -> Path | None:
    candidates = [os.environ.get("CADET_REFERENCE_DIR", "")]
    candidates += [str(p / "shared" / "reference" / "original_tiny") for p in Path(__file__).resolve().parents]
    candidates.append("/work/shared/reference/original_tiny")
    for c in candidates:
        if c and (Path(c) / "encoder_state_dict.pt").is_file():
            return Path(c) / "encoder_state_dict.pt"
    return None


REFERENCE_WEIGHTS = _reference_weights()
needs_weights = pytest.mark.skipif(REFERENCE_WEIGHTS is None, reason="shared/reference/original_tiny/encoder_state_dict.pt "
                                   "not found (set CADET_REFERENCE_DIR)")
ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).parent / "fixtures" / "seed_templates"


@needs_weights
def test_original_encoder_matches_reference_outputs() -> None:
    arch = json.loads((REFERENCE / "config.json").read_text())
    state = torch.load(REFERENCE_WEIGHTS, map_location="cpu")
    encoder = load_original_encoder(state, **arch)
    assert not encoder.training
    x = torch.load(REFERENCE / "input.pt")
    expected = torch.load(REFERENCE / "expected_stage_outputs.pt")
    with torch.no_grad():
        outs = encoder(x)
    assert len(outs) == 4
    for out, exp in zip(outs, expected):
        # the reference is itself float32 output of another BLAS: a float64 evaluation of the same maths
        # differs from it by up to 1.2e-5, so the comparison is 1e-5 absolute plus 1e-5 relative
        torch.testing.assert_close(out, exp, atol=1e-5, rtol=1e-5)


@needs_weights
def test_original_encoder_rejects_wrong_architecture() -> None:
    arch = json.loads((REFERENCE / "config.json").read_text())
    state = torch.load(REFERENCE_WEIGHTS, map_location="cpu")
    arch["depths"] = [2, 2, 1, 1]
    with pytest.raises(ValueError, match="missing"):
        load_original_encoder(state, **arch)


@pytest.mark.parametrize("backbone,count", [("mit_b0", 27_786_433), ("mit_b1", 60_014_945), ("mit_b2", 82_104_673),
                                            ("mit_b4", 155_397_473), ("mit_b5", 196_598_113)])
def test_original_baseline_parameter_counts(backbone: str, count: int) -> None:
    cfg = load_config(ROOT / "configs" / "original_baseline.yaml", [f"model.backbone={backbone}"])
    model = build_detector(cfg)
    assert sum(p.numel() for p in model.parameters()) == count


def test_model_info_json_for_b4(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["model-info", "--config", str(ROOT / "configs" / "original_baseline.yaml"), "model.backbone=mit_b4",
                 "--json", "--size", "none"])
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_params"] == 155_397_473
    assert sum(info["components"].values()) == info["total_params"]
    assert set(info["components"]) >= {"stream_rgb", "stream_thermal+event", "fpn", "rpn", "roi_heads",
                                       "fusion_s1_frm_ffm", "fusion_s4_frm_ffm"}


@pytest.mark.parametrize("template", ["cssa", "gaff", "baseline"])
def test_model_info_on_seed_templates(template: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["model-info", "--config", str(TEMPLATES / f"{template}.json"), "--json", "--size", "64x64",
                 "model.mit.depths=[1,1,1,1]"])
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_classes"] == 1
    assert info["flops"]["backbone_gflops"] > 0 and info["flops"]["detector_gflops"] > info["flops"]["backbone_gflops"]
    fusion_keys = [k for k in info["components"] if k.startswith("fusion_s3_")]
    assert fusion_keys == [f"fusion_s3_{'frm_ffm' if template == 'baseline' else template}"]


def test_model_info_bad_override_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model-info", "model.backbon=mit_b2", "--json"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'model.backbon'" in err and "model.backbone" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------ pretrained weights
TINY = {"embed_dims": [8, 16, 24, 32], "depths": [1, 2, 1, 1], "num_heads": [1, 2, 2, 4]}


def _segformer_state(seed: int = 0, **spec_overrides) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    stream = MixTransformer(mit_spec("mit_b0", **{**TINY, **spec_overrides}), in_chans=3)
    state = dict(stream.state_dict())
    state["head.weight"] = torch.randn(10, 32)  # the ImageNet classifier is ignored
    return state


def _to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Hugging Face nvidia/mit-bX layout of a SegFormer-layout state dict (written independently)."""
    out = {}
    block_names = {"norm1": "layer_norm_1", "norm2": "layer_norm_2", "attn.q": "attention.self.query",
                   "attn.sr": "attention.self.sr", "attn.norm": "attention.self.layer_norm",
                   "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.dense1",
                   "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.dense2"}
    for key, value in state.items():
        if m := re.fullmatch(r"patch_embed(\d)\.(proj|norm)\.(\w+)", key):
            part = "proj" if m.group(2) == "proj" else "layer_norm"
            out[f"segformer.encoder.patch_embeddings.{int(m.group(1)) - 1}.{part}.{m.group(3)}"] = value
        elif m := re.fullmatch(r"norm(\d)\.(\w+)", key):
            out[f"segformer.encoder.layer_norm.{int(m.group(1)) - 1}.{m.group(2)}"] = value
        elif m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)\.(weight|bias)", key):
            prefix = f"segformer.encoder.block.{int(m.group(1)) - 1}.{m.group(2)}"
            inner, kind = m.group(3), m.group(4)
            if inner == "attn.kv":
                k, v = value.chunk(2, dim=0)
                out[f"{prefix}.attention.self.key.{kind}"] = k.clone()
                out[f"{prefix}.attention.self.value.{kind}"] = v.clone()
            else:
                out[f"{prefix}.{block_names[inner]}.{kind}"] = value
        elif key.startswith("head."):
            out[key.replace("head.", "classifier.")] = value
    return out


def _tiny_cfg(path: Path | None = None):
    model = {"mit": TINY, "detector": {"fpn_channels": 16, "box_head_dim": 32}}
    if path is not None:
        model["pretrained"] = str(path)
    return build_config({"model": model})


def _check_loaded(model, state: dict[str, torch.Tensor]) -> None:
    rgb, x = model.backbone.encoder.streams
    torch.testing.assert_close(rgb.block2[1].attn.kv.weight, state["block2.1.attn.kv.weight"])
    torch.testing.assert_close(x.block4[0].mlp.fc2.weight, state["block4.0.mlp.fc2.weight"])
    torch.testing.assert_close(rgb.patch_embed1.proj.weight, state["patch_embed1.proj.weight"])
    # the 2-channel X stream gets the RGB stem adapted: mean filter, scaled by 3 / 2
    expected = state["patch_embed1.proj.weight"].mean(1, keepdim=True).repeat(1, 2, 1, 1) * 1.5
    torch.testing.assert_close(x.patch_embed1.proj.weight, expected)


def test_pretrained_segformer_layout(tmp_path: Path) -> None:
    state = _segformer_state()
    path = tmp_path / "mit_b0.pth"
    torch.save({"state_dict": state}, path)
    _check_loaded(build_detector(_tiny_cfg(path), 1), state)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_pretrained_huggingface_layout(tmp_path: Path, suffix: str) -> None:
    state = _segformer_state(seed=1)
    hf = _to_hf(state)
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in hf.items()}, str(path))
    else:
        torch.save(hf, path)
    _check_loaded(build_detector(_tiny_cfg(path), 1), state)


def test_pretrained_wrong_variant_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    torch.save(_segformer_state(embed_dims=[16, 32, 48, 64]), path)
    with pytest.raises(ConfigError, match="model.backbone"):
        build_detector(_tiny_cfg(path), 1)
    deeper = tmp_path / "deep.pth"
    torch.save(_segformer_state(depths=[1, 3, 1, 1]), deeper)
    with pytest.raises(ConfigError, match="more blocks"):
        build_detector(_tiny_cfg(deeper), 1)
    junk = tmp_path / "junk.pth"
    torch.save({"foo.weight": torch.zeros(2)}, junk)
    with pytest.raises(ConfigError, match="no MiT encoder weights"):
        load_pretrained_encoder(build_detector(_tiny_cfg(), 1).backbone.encoder, junk)


def test_pretrained_missing_file_is_reported() -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_detector(_tiny_cfg(Path("nope.pth")), 1)


# ------------------------------------------------------------------------------------ convert-original
def _to_original_key(key: str) -> str:
    """This project's detector key -> the original code base's key (inverse mapping, written independently)."""
    if m := re.fullmatch(r"backbone\.encoder\.streams\.(\d)\.(patch_embed|block|norm)(\d)(\..+)", key):
        return f"backbone.encoder.{'extra_' if m.group(1) == '1' else ''}{m.group(2)}{m.group(3)}{m.group(4)}"
    if m := re.fullmatch(r"backbone\.encoder\.fusions\.(\d)\.(frm|ffm)\.(.+)", key):
        return f"backbone.encoder.{'FRMs' if m.group(2) == 'frm' else 'FFMs'}.{m.group(1)}.{m.group(3)}"
    return key


def test_original_mit_b1_key_layout_is_reproduced() -> None:
    model = build_detector(original_detector_config("mit_b1", 1))
    ours = {_to_original_key(k): list(v.shape) for k, v in model.state_dict().items()}
    reference = json.loads((REFERENCE / "mit_b1_detector_keys.json").read_text())
    assert ours == reference


def test_convert_original_checkpoint_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    source = build_detector(original_detector_config("mit_b0", 2))
    original_state = {_to_original_key(k): v for k, v in source.state_dict().items()}
    src = tmp_path / "original.pth"
    torch.save({"epoch": 14, "model_state_dict": original_state}, src)
    out = tmp_path / "converted.pt"
    assert main(["convert-original", str(src), str(out), "--backbone", "mit_b0"]) == 0
    ckpt = torch.load(out, map_location="cpu", weights_only=False)
    assert ckpt["num_classes"] == 2
    cfg = build_config(ckpt["config"])
    assert cfg.data.modalities[0].scale == 1.0 and cfg.model.detector.resize == "shorter_side"
    model = build_detector(cfg)
    model.load_state_dict(ckpt["model"])
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    # a checkpoint of another variant is a clear error
    assert main(["convert-original", str(src), str(tmp_path / "x.pt"), "--backbone", "mit_b1"]) == 2
    assert "--backbone mit_b1" in capsys.readouterr().err
