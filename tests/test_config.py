"""Typed config: files, overrides, errors, the original JSON templates."""

from __future__ import annotations

import json
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
