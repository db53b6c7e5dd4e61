"""Typed config: files, overrides, errors, the original JSON templates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from crossattentiondet.config import (
    ConfigError,
    ExperimentConfig,
    build_config,
    diff_configs,
    load_config,
    parse_override,
    save_config,
)

TEMPLATES = Path(__file__).parent / "fixtures" / "seed_templates"


def test_defaults_are_the_original_baseline_architecture() -> None:
    cfg = ExperimentConfig()
    assert cfg.model.backbone == "mit_b1"
    assert cfg.model.streams == [["rgb"], ["thermal", "event"]]
    assert [cfg.model.fusion.module_for_stage(s) for s in (1, 2, 3, 4)] == ["frm_ffm"] * 4
    assert cfg.model.detector.resize == "native"  # no silent upscaling
    assert [m.name for m in cfg.data.modalities] == ["rgb", "thermal", "event"]


def test_overrides_coerce_types() -> None:
    cfg = load_config(None, ["model.fusion.stages=[1,4]", "train.precision=bf16", "train.lr=0.01",
                             "train.ema.enabled=true", "model.pretrained=null", "data.split.seed=7"])
    assert cfg.model.fusion.stages == [1, 4]
    assert cfg.train.precision == "bf16"
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.train.ema.enabled is True
    assert cfg.data.split.seed == 7


@pytest.mark.parametrize("text,expected", [("3", [3]), ("2,3", [2, 3]), ("34", [3, 4]), ("[1,2,3,4]", [1, 2, 3, 4])])
def test_stage_lists_accept_the_seed_script_spellings(text: str, expected: list[int]) -> None:
    cfg = load_config(None, [f"model.fusion.stages={text}"]) if text.startswith("[") else \
        build_config({"model": {"fusion": {"stages": text}}})
    assert cfg.model.fusion.stages == expected


def test_override_into_list_element() -> None:
    cfg = load_config(None, ["data.modalities.1.mean=[0.3]", "data.modalities.1.std=[0.2]"])
    assert cfg.data.modalities[1].mean == [0.3]


def test_unknown_key_names_key_and_closest_valid_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epoch=3"])
    assert "unknown key 'train.epoch'" in str(err.value)
    assert "did you mean 'train.epochs'" in str(err.value)


def test_unknown_key_in_wrong_section_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"train": {"backbone": "mit_b0"}})
    assert "model.backbone" in str(err.value)


def test_wrong_type_names_key_and_value() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.lr=fast"])
    msg = str(err.value)
    assert "train.lr" in msg and "'fast'" in msg


def test_bad_literal_and_bad_stage() -> None:
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="stages must be in 1..4"):
        load_config(None, ["model.fusion.stages=[5]"])


def test_unknown_modality_in_streams_is_an_error() -> None:
    with pytest.raises(ConfigError, match="depth"):
        load_config(None, ["model.streams=[[rgb],[depth]]"])


def test_malformed_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_yaml_file_with_base_and_saved_config_round_trip(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"train": {"epochs": 3, "lr": 0.02}}))
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"base": "base.yaml", "train": {"lr": 0.01}, "name": "x"}))
    cfg = load_config(exp, ["train.batch_size=4"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size, cfg.name) == (3, 0.01, 4, "x")
    saved = tmp_path / "resolved.yaml"
    save_config(cfg, saved)
    again = load_config(saved)
    assert again == cfg
    assert diff_configs(cfg, again) == {}


def test_json_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"backbone": "mit_b0"}}))
    assert load_config(path).model.backbone == "mit_b0"


def test_diff_configs_lists_changed_keys() -> None:
    a = ExperimentConfig()
    b = load_config(None, ["model.fusion.type=cssa", "model.fusion.stages=[3]"])
    assert diff_configs(a, b) == {"model.fusion.type": "cssa", "model.fusion.stages": [3]}


def test_seed_cssa_template_means_the_same_experiment() -> None:
    cfg = load_config(TEMPLATES / "cssa.json")
    assert cfg.name == "exp_003_s3_t0.5"
    assert cfg.model.backbone == "mit_b1"
    f = cfg.model.fusion
    assert (f.type, f.stages, f.cssa.switching_thresh, f.cssa.kernel_size) == ("cssa", [3], 0.5, 3)
    assert [f.module_for_stage(s) for s in (1, 2, 3, 4)] == ["frm_ffm", "frm_ffm", "cssa", "frm_ffm"]
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr) == (25, 2, 0.005)
    assert (t.optimizer.type, t.optimizer.momentum, t.optimizer.weight_decay) == ("sgd", 0.9, 0.0001)
    assert t.schedule.type == "constant"
    d = cfg.data
    assert d.layout == "original"
    assert d.images_dir == "../RGBX_Semantic_Segmentation/data/images"
    assert d.labels == "../RGBX_Semantic_Segmentation/data/labels"
    assert d.root == "../RGBX_Semantic_Segmentation/data"
    assert d.split.train == 0.8 and d.split.val + d.split.test == pytest.approx(0.2)


def test_seed_gaff_template_means_the_same_experiment() -> None:
    cfg = load_config(TEMPLATES / "gaff.json")
    g = cfg.model.fusion
    assert (g.type, g.stages, g.gaff.se_reduction, g.gaff.inter_shared, g.gaff.merge_bottleneck) == \
        ("gaff", [3], 4, False, False)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (25, 8, 0.0001)
    assert cfg.train.optimizer.weight_decay == 0.0001


def test_seed_baseline_template_means_the_same_experiment() -> None:
    cfg = load_config(TEMPLATES / "baseline.json")
    assert cfg.name == "baseline_mit_b1"
    assert [cfg.model.fusion.module_for_stage(s) for s in (1, 2, 3, 4)] == ["frm_ffm"] * 4
    assert cfg.model.fusion.flow == "separate"
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.optimizer.weight_decay) == (15, 16, 0.02, 0.0005)
    assert (t.schedule.type, t.schedule.step_size, t.schedule.gamma) == ("step", 15, 0.1)


def test_seed_template_with_overrides_and_bad_key(tmp_path: Path) -> None:
    cfg = load_config(TEMPLATES / "cssa.json", ["train.epochs=2"])
    assert cfg.train.epochs == 2
    raw = json.loads((TEMPLATES / "cssa.json").read_text())
    raw["training"]["learning_rat"] = 0.1
    path = tmp_path / "t.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="learning_rat"):
        load_config(path)


def test_cadet_config_prints_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    from crossattentiondet.cli import main

    assert main(["config", "--config", "preset:demo", "train.epochs=3"]) == 0
    tree = yaml.safe_load(capsys.readouterr().out)
    assert tree["train"]["epochs"] == 3 and tree["name"] == "demo" and tree["model"]["backbone"] == "mit_b0"
    assert main(["config", "--presets"]) == 0
    assert "preset:demo" in capsys.readouterr().out.split()
    assert main(["config", "--config", "preset:nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


REPO_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    if path.name.startswith("memory_plan_"):
        # the GPU memory plans of benchmarks/RESULTS.md: effective batch 16 for the backbone in their name
        assert config.model.backbone in path.name
        assert config.train.batch_size * config.train.accumulation == 16
        assert config.train.precision in ("bf16", "fp16")


def test_memory_plans_exist_for_large_backbones() -> None:
    names = {p.name for p in REPO_CONFIGS}
    assert {f"memory_plan_mit_b{b}_{gb}gb.yaml" for b in (4, 5) for gb in (40, 80)} <= names


def test_cli_output_into_a_closed_pipe_is_not_a_traceback() -> None:
    import os
    import subprocess
    import sys

    # unbuffered, so the second line is written after `head` has gone: the write fails with EPIPE
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(["bash", "-c", f"'{sys.executable}' -m crossattentiondet study list | head -c 1"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.stdout == "c" and "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------ bad input
def _float_keys(model: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Dotted keys of every plain float field (``float`` or ``float | None``), through nested sections."""
    from pydantic import BaseModel

    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _float_keys(annotation, f"{prefix}{name}.")
        elif annotation is float or set(getattr(annotation, "__args__", ())) == {float, type(None)}:
            keys.append(f"{prefix}{name}")
    return keys


def test_every_float_field_rejects_infinity_and_nan() -> None:
    keys = _float_keys()
    assert len(keys) > 40 and "train.lr" in keys and "model.detector.rpn.nms_thresh" in keys
    for key in keys:
        for text in ("inf", "-.inf", "nan"):
            with pytest.raises(ConfigError, match=rf"{re.escape(key)}: bad value .*finite number"):
                load_config(None, [f"{key}={text}"])


def test_floats_inside_lists_and_tuples_must_be_finite() -> None:
    for override in ("data.modalities.0.mean=[nan,0.5,0.5]", "data.augment.scale_jitter=[0.8,inf]",
                     "model.detector.aspect_ratios=[0.5,inf]", "model.mit.mlp_ratios=[4,4,.inf,4]",
                     "train.schedule.milestones=[8,inf]"):
        with pytest.raises(ConfigError, match="finite number"):
            load_config(None, [override])


def test_validation_errors_are_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.lr=inf", "train.epochs=0"])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("invalid config (overrides): train.epochs: ") and "; train.lr: " in msg


@pytest.mark.parametrize(("overrides", "words"), [
    (["model.mit.embed_dims=[32,100,160,256]", "model.mit.num_heads=[1,3,5,8]"],
     "model.mit.embed_dims: stage 2 has 100 channels, not divisible by its 3 heads (model.mit.num_heads)"),
    (["model.mit.embed_dims=[64,128,321,512]"],
     "model.mit.embed_dims: stage 3 has 321 channels, not divisible by its 5 heads (mit_b1's default)"),
    (["model.backbone=mit_b0", "model.mit.num_heads=[1,2,6,8]"],
     "model.mit.num_heads: stage 3 has 6 heads, which do not divide its 160 channels (mit_b0's default embed_dims)"),
    (["model.mit.num_heads=[0,2,5,8]"], "model.mit.num_heads.0"),
])
def test_mit_widths_must_split_over_the_heads(overrides: list[str], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert words in str(err.value)


def test_mit_widths_that_split_are_accepted() -> None:
    cfg = load_config(None, ["model.backbone=mit_b0", "model.mit.embed_dims=[8,16,24,32]",
                             "model.mit.num_heads=[1,2,2,4]"])
    assert cfg.model.mit.embed_dims == [8, 16, 24, 32]
    assert load_config(None, ["model.mit.embed_dims=[16,32,80,128]"]).model.mit.embed_dims == [16, 32, 80, 128]


def test_zeroing_every_used_modality_is_an_error() -> None:
    with pytest.raises(ConfigError, match="model.zero_modalities: .* the model would see nothing"):
        load_config(None, ["model.zero_modalities=[rgb,thermal,event]"])
    with pytest.raises(ConfigError, match="model.zero_modalities"):
        load_config(None, ["model.streams=[[thermal]]", "model.zero_modalities=[thermal]"])
    # zeroing some is the original's modality ablation; a modality no stream uses leaves the rest seen
    assert load_config(None, ["model.zero_modalities=[thermal,event]"]).model.used_modalities() == ["rgb"]
    assert load_config(None, ["model.streams=[[rgb]]", "model.zero_modalities=[event]"]).model.used_modalities() == \
        ["rgb"]


def test_class_names_must_be_unique() -> None:
    with pytest.raises(ConfigError, match=r"data.names: class names must be unique, repeated: \['a'\]"):
        load_config(None, ["data.names=[a,a,b]"])
    assert load_config(None, ["data.names=[a,b]"]).data.names == ["a", "b"]


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(("name", "text", "words"), [
    ("c.yaml", b"name: a\nname: b\n", "duplicate key 'name' at line 2 (first at line 1)"),
    ("c.yaml", b"train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "duplicate key 'lr' at line 4 (first at line 2)"),
    ("c.yaml", b"model: {fusion: {type: cssa, type: gaff}}\n", "duplicate key 'type' at line 1"),
    ("c.yaml", b"data:\n  modalities:\n    - {name: rgb, channels: 3, channels: 1}\n",
     "duplicate key 'channels' at line 3"),
    ("c.yaml", b"data:\n  split: {1: a}\nx:\n  1: b\n  1: c\n", "duplicate key '1' at line 5"),
    ("c.json", b'{"name": "a", "name": "b"}', "duplicate key 'name' at line 1"),
    ("c.json", b'{"train": {"lr": 0.1,\n  "epochs": 2,\n  "lr": 0.2}}', "duplicate key 'lr' at line 3"),
    # "stages" twice, but in two objects: the repeat is "name"
    ("c.json", b'{"cssa": {"stages": [3]},\n "gaff": {"stages": [3]},\n "name": "a", "n": {"x": "}{\\"name\\":"},\n'
     b' "name": "b"}', "duplicate key 'name' at line 4"),
])
def test_duplicate_keys_name_file_key_and_line(tmp_path: Path, name: str, text: bytes, words: str) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value)


def test_yaml_merge_keys_may_still_be_overridden() -> None:
    from crossattentiondet.config import UniqueKeyLoader

    text = "a: &c {lr: 0.1, epochs: 3}\ntrain:\n  <<: *c\n  lr: 0.2\n"
    assert yaml.load(text, Loader=UniqueKeyLoader)["train"] == {"lr": 0.2, "epochs": 3}  # noqa: S506


def test_duplicate_key_inside_an_override_value() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'type'"):
        parse_override("model.fusion={type: cssa, type: gaff}")


@pytest.mark.parametrize(("content", "words"), [
    (b"\x00\x01\x02\x03binary", "not a text file"),
    ("name: x\n".encode("utf-16"), "not a text file"),
    (b"name: caf\xe9\n", "not a UTF-8 text file (byte 0xe9 at offset 9)"),
    (b"\xff\xd8\xff\xe0 JFIF", "not a UTF-8 text file"),
])
def test_non_utf8_config_file_is_a_config_error(tmp_path: Path, content: bytes, words: str) -> None:
    for name in ("c.yaml", "c.json"):
        path = _write(tmp_path, name, content)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert str(err.value) == f"{path}: {words}" or str(err.value).startswith(f"{path}: {words}")


def test_utf8_with_bom_still_loads(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "c.yaml", "\ufeffname: café\n".encode())).name == "café"
    assert load_config(_write(tmp_path, "c.json", '\ufeff{"name": "b"}'.encode())).name == "b"


def test_syntax_errors_are_one_line(tmp_path: Path) -> None:
    for name, text in (("c.yaml", b"train: [unclosed\n"), ("c.json", b'{"train": }')):
        with pytest.raises(ConfigError) as err:
            load_config(_write(tmp_path, name, text))
        assert "\n" not in str(err.value) and "line " in str(err.value)
