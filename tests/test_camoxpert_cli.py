"""camoXpert's train_ultimate.py flags (seeds/004) on `cadet train` / `cadet config`: config level, no training."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from crossattentiondet.cli import build_parser, main, parse_command_line
from crossattentiondet.cli.camoxpert import ORIGINAL_DEFAULTS, camoxpert_overrides, phase_summary_lines
from crossattentiondet.cli.train_cmd import flag_config
from crossattentiondet.config import ConfigError, ExperimentConfig, load_config
from crossattentiondet.segmentation.layouts import open_seg_source
from tests.test_seg_layouts import cod10k_tree

# seeds/004's three commands, exactly as the document writes them (its Kaggle paths are replaced per test)
CONSERVATIVE = """python train_ultimate.py train \\
    --dataset-path /kaggle/input/cod10k-dataset/COD10K-v3 \\
    --checkpoint-dir /kaggle/working/checkpoints_batch8 \\
    --resume-from /kaggle/working/checkpoints/best_model.pth \\
    --skip-stage1 \\
    --backbone edgenext_base \\
    --num-experts 7 \\
    --batch-size 8 \\
    --stage2-batch-size 2 \\
    --accumulation-steps 2 \\
    --img-size 384 \\
    --epochs 120 \\
    --stage1-epochs 30 \\
    --lr 0.0004 \\
    --stage2-lr 0.00018 \\
    --scheduler cosine \\
    --min-lr 0.00001 \\
    --progressive-unfreeze \\
    --deep-supervision \\
    --num-workers 4"""
AGGRESSIVE = """python train_ultimate.py train \\
    --dataset-path /kaggle/input/cod10k-dataset/COD10K-v3 \\
    --checkpoint-dir /kaggle/working/checkpoints_batch8_aggressive \\
    --resume-from /kaggle/working/checkpoints/best_model.pth \\
    --skip-stage1 \\
    --backbone edgenext_base \\
    --num-experts 7 \\
    --batch-size 8 \\
    --stage2-batch-size 2 \\
    --accumulation-steps 2 \\
    --img-size 384 \\
    --epochs 120 \\
    --stage1-epochs 30 \\
    --lr 0.0004 \\
    --stage2-lr 0.00022 \\
    --scheduler cosine \\
    --min-lr 0.00002 \\
    --warmup-epochs 3 \\
    --progressive-unfreeze \\
    --deep-supervision \\
    --num-workers 4"""
MAXIMUM = """python train_ultimate.py train \\
    --dataset-path /kaggle/input/cod10k-dataset/COD10K-v3 \\
    --checkpoint-dir /kaggle/working/checkpoints_batch8_max \\
    --resume-from /kaggle/working/checkpoints/best_model.pth \\
    --skip-stage1 \\
    --backbone edgenext_base \\
    --num-experts 7 \\
    --batch-size 8 \\
    --stage2-batch-size 2 \\
    --accumulation-steps 4 \\
    --img-size 384 \\
    --epochs 120 \\
    --stage1-epochs 30 \\
    --lr 0.0005 \\
    --stage2-lr 0.00020 \\
    --scheduler cosine \\
    --min-lr 0.00002 \\
    --warmup-epochs 5 \\
    --progressive-unfreeze \\
    --deep-supervision \\
    --num-workers 4"""
# (command, stage-1 lr, stage-2 lr, accumulation, min lr, stage-2 warmup)
COMMANDS = {"conservative": (CONSERVATIVE, 4e-4, 1.8e-4, 2, 1e-5, 0.0),
            "aggressive": (AGGRESSIVE, 4e-4, 2.2e-4, 2, 2e-5, 3.0),
            "maximum": (MAXIMUM, 5e-4, 2e-4, 4, 2e-5, 5.0)}


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    weights = tmp_path / "old" / "best_model.pth"
    weights.parent.mkdir()
    torch.save({"model": {}}, weights)
    return {"data": cod10k_tree(tmp_path / "COD10K-v3"), "weights": weights, "ckpt": tmp_path / "work"}


def cadet_argv(command: str, paths: dict[str, Path]) -> list[str]:
    """The document's command with `cadet train` for `python train_ultimate.py train`, on the test's files."""
    argv = shlex.split(command.replace("\\\n", " "))  # the shell's line continuations
    assert argv[:3] == ["python", "train_ultimate.py", "train"]
    swap = {"/kaggle/input/cod10k-dataset/COD10K-v3": str(paths["data"]),
            "/kaggle/working/checkpoints/best_model.pth": str(paths["weights"])}
    out = ["train"]
    for token in argv[3:]:
        if token.startswith("/kaggle/working/checkpoints_batch8"):
            token = str(paths["ckpt"] / Path(token).name)
        out.append(swap.get(token, token))
    return out


def resolve(argv: list[str], notes: list[str] | None = None) -> ExperimentConfig:
    args = parse_command_line(build_parser(), argv)
    base, overrides = flag_config(args, notes if notes is not None else [])
    return load_config(base, overrides)


def test_preset_is_the_conservative_configuration_and_fits_the_cod10k_reader(tmp_path: Path) -> None:
    config = load_config("preset:camoxpert", ["data.root=/x"])
    assert config.task == "segment" and config.data.root == "/x"
    assert config.model.backbone == "timm:edgenext_base" and config.model.streams == [["rgb"]]
    [rgb] = config.data.modalities
    assert (rgb.name, rgb.mean, rgb.std) == ("rgb", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    seg = config.model.seg
    assert (seg.decoder, seg.deep_supervision, seg.size, seg.resize) == ("unet", True, 384, "square")
    assert (seg.loss.bce, seg.loss.iou, seg.loss.edge, seg.loss.deep_supervision) == (2.0, 1.5, 1.0, 0.4)
    assert seg.moe.enabled and seg.moe.num_experts == 7 and seg.moe.k == 3
    aug = config.data.augment
    assert (aug.hflip, aug.vflip, aug.rot90) == (0.5, 0.2, 0.2) and aug.color_jitter.prob > 0
    train = config.train
    assert (train.optimizer.type, train.optimizer.weight_decay, train.grad_clip, train.precision) == \
        ("adamw", 1e-4, 0.5, "fp32")
    assert train.phase_epochs() == [30, 90] and train.start_phase == 1
    s1, s2 = train.phases
    assert (s1.name, s1.batch_size, s1.accumulation, s1.lr, s1.freeze) == ("stage1", 8, 2, 4e-4, "backbone")
    assert (s2.name, s2.batch_size, s2.accumulation, s2.lr, s2.backbone_lr_mult, s2.freeze) == \
        ("stage2", 2, 2, 1.8e-4, 0.1, "progressive")
    assert {(s.schedule.type, s.schedule.min_lr) for s in (s1, s2)} == {("cosine", 1e-5)}
    assert config.eval.select is None  # the segment task's default: S-measure
    # a COD10K tree keeps the preset's modalities as they are (nothing cut, nothing to resolve)
    root = cod10k_tree(tmp_path / "cod")
    source = open_seg_source(root, config.data)
    assert source.layout == "cod10k" and source.modality_names == ["rgb"]
    assert not any("RGB images only" in note for note in source.notes)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_documents_commands_resolve_to_its_configuration(name: str, paths: dict[str, Path]) -> None:
    command, lr1, lr2, accumulation, min_lr, warmup = COMMANDS[name]
    notes: list[str] = []
    config = resolve(cadet_argv(command, paths), notes)
    assert config.task == "segment" and config.data.root == str(paths["data"])
    assert config.model.backbone == "timm:edgenext_base"
    moe = config.model.seg.moe
    assert moe.enabled and moe.num_experts == 7 and moe.k == 3
    assert config.model.seg.size == 384 and config.model.seg.deep_supervision
    assert config.data.loader.num_workers == 4 and config.seed == 42
    train = config.train
    assert train.epochs == 120 and train.phase_epochs() == [30, 90] and train.start_phase == 2
    s1, s2 = train.phases
    assert (s1.name, s1.epochs, s1.batch_size, s1.accumulation, s1.lr, s1.freeze) == \
        ("stage1", 30, 8, accumulation, lr1, "backbone")
    assert (s2.name, s2.epochs, s2.batch_size, s2.accumulation, s2.lr, s2.backbone_lr_mult, s2.freeze) == \
        ("stage2", None, 2, accumulation, lr2, 0.1, "progressive")
    for phase in (s1, s2):
        assert (phase.schedule.type, phase.schedule.min_lr) == ("cosine", min_lr)
    assert s1.schedule.warmup_epochs == 0 and s2.schedule.warmup_epochs == warmup
    assert config.model.init_from == str(paths["weights"])
    suffix = {"conservative": "", "aggressive": "_aggressive", "maximum": "_max"}[name]
    assert config.run_dir == paths["ckpt"] / f"checkpoints_batch8{suffix}"
    assert config.train.ema.enabled is False and config.model.grad_checkpointing is False
    assert config.train.precision == ("fp16" if torch.cuda.is_available() else "fp32")
    assert notes[0].startswith("camoXpert flags (--dataset-path, --checkpoint-dir, --resume-from, ...)")
    assert any(n.startswith("--resume-from ") and "weights only" in n and "cadet train --resume RUN" in n
               for n in notes)
    assert not any(n.startswith("warning: ") for n in notes), notes


def test_cadet_config_json_prints_the_phases(paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = cadet_argv(MAXIMUM, paths)
    assert main(["config", "--json", *argv[1:]]) == 0
    captured = capsys.readouterr()
    tree = json.loads(captured.out)
    assert tree["task"] == "segment" and tree["train"]["start_phase"] == 2
    s1, s2 = tree["train"]["phases"]
    assert (s1["batch_size"], s1["accumulation"], s1["lr"], s1["epochs"]) == (8, 4, 5e-4, 30)
    assert (s2["batch_size"], s2["accumulation"], s2["lr"], s2["freeze"]) == (2, 4, 2e-4, "progressive")
    assert s2["schedule"]["warmup_epochs"] == 5 and s2["schedule"]["min_lr"] == 2e-5
    assert "note: camoXpert flags" in captured.err  # notes on stderr, stdout is the JSON alone


def test_cadet_config_yaml_ends_with_a_phase_summary(paths: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", *cadet_argv(CONSERVATIVE, paths)[1:]]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert lines[-2] == ("# phase 1 stage1: epochs 1-30, batch 8 x accumulation 2 = 16, lr 0.0004, backbone lr "
                         "0.0004, schedule cosine to min_lr 1e-05, freeze backbone (skipped: train.start_phase=2)")
    assert lines[-1] == ("# phase 2 stage2: epochs 31-120, batch 2 x accumulation 2 = 4, lr 0.00018, backbone lr "
                         "1.8e-05, schedule cosine to min_lr 1e-05, freeze progressive (3 steps, last stage first)")
    assert phase_summary_lines(load_config(None)) == [
        "# phase 1 train: epochs 1-12, batch 2 x accumulation 1 = 2, lr 0.005, backbone lr 0.005, schedule "
        "constant, freeze none"]


def test_cadet_train_trains_the_resolved_config(paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, object] = {}

    def fake_train(config, resume=False):  # noqa: ANN001, ANN202
        seen.update(config=config, resume=resume)
        raise SystemExit(0)

    monkeypatch.setattr("crossattentiondet.engine.trainer.train", fake_train)
    with pytest.raises(SystemExit):
        main(cadet_argv(AGGRESSIVE, paths))
    config = seen["config"]
    assert isinstance(config, ExperimentConfig) and seen["resume"] is False
    assert config.train.phases[1].lr == 2.2e-4 and config.train.start_phase == 2
    out = capsys.readouterr().out
    assert out.startswith("note: camoXpert flags")
    assert "note: --warmup-epochs 3: a linear ramp over stage 2's first 3 epochs (stage 2 only" in out


def test_flags_left_out_take_train_ultimates_defaults(paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    notes: list[str] = []
    config = resolve(["train", "--dataset-path", str(paths["data"]), "--batch-size", "8"], notes)
    train = config.train
    s1, s2 = train.phases
    assert (s1.batch_size, s2.batch_size) == (8, 4)  # stage 2 = batch // 2
    assert (s1.accumulation, s2.accumulation) == (4, 4)
    assert (s1.lr, s2.lr) == (2.5e-4, 2.5e-4)
    assert {s1.schedule.type, s2.schedule.type} == {"onecycle"} and s1.schedule.min_lr == 1e-6
    assert train.epochs == 120 and train.phase_epochs() == [30, 90] and train.start_phase == 1
    assert (s1.freeze, s2.freeze, s2.backbone_lr_mult) == ("backbone", "none", 0.1)
    assert (train.ema.enabled, train.ema.decay, train.optimizer.weight_decay) == (False, 0.999, 1e-4)
    assert config.model.seg.deep_supervision is False and config.model.grad_checkpointing is False
    assert config.model.seg.moe.num_experts == ORIGINAL_DEFAULTS["num_experts"] == 7
    assert (config.seed, config.data.loader.num_workers, config.model.seg.size) == (42, 4, 384)
    assert "--scheduler onecycle" in notes[0] and "off: --skip-stage1" in notes[0]
    # the original's AMP where CUDA is: fp16 on a CUDA device, fp32 elsewhere, and a note saying which
    assert config.train.precision == ("fp16" if torch.cuda.is_available() else "fp32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    notes = []
    assert resolve(["train", "--dataset-path", "/d"], notes).train.precision == "fp16"
    assert any(n.startswith("precision fp16") for n in notes)
    assert resolve(["train", "--dataset-path", "/d", "--device", "cpu"]).train.precision == "fp32"
    # batch 1: stage 2 keeps batch 1; an odd stage-2 lr is the stage-1 lr
    config = resolve(["train", "--dataset-path", "/d", "--batch-size", "1", "--lr", "0.001"])
    assert [p.batch_size for p in config.train.phases] == [1, 1] and config.train.phases[1].lr == 0.001


def test_with_a_config_only_the_flags_given_change_it(tmp_path: Path) -> None:
    config = resolve(["train", "--config", "preset:camoxpert", "--stage2-lr", "0.0003", "--epochs", "60"])
    s1, s2 = config.train.phases
    assert s2.lr == 3e-4 and (s1.accumulation, s2.accumulation) == (2, 2)  # the preset's, not the original's 4
    assert s1.schedule.type == "cosine" and config.train.phase_epochs() == [30, 30]
    assert config.train.precision == "fp32" and config.seed == 42
    flat = tmp_path / "flat.yaml"
    flat.write_text("task: segment\nmodel: {streams: [[rgb]]}\ndata:\n  modalities:\n"
                    "    - {name: rgb, channels: 3, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}\n")
    assert resolve(["train", "--config", str(flat), "--seed", "3", "--epochs", "5"]).seed == 3
    with pytest.raises(ConfigError, match=r"--stage2-lr sets stage 2 of train.phases, but .*flat.yaml has 0"):
        resolve(["train", "--config", str(flat), "--stage2-lr", "0.001"])


def test_warning_notes(paths: dict[str, Path]) -> None:
    notes: list[str] = []
    resolve(["train", "--dataset-path", "/d", "--scheduler", "cosine", "--t-mult", "3"], notes)
    assert "warning: --t-mult 3 has no effect: it shapes cosine_restart only (the schedule is cosine)" in notes
    notes = []
    resolve(["train", "--dataset-path", "/d", "--scheduler", "cosine_restart", "--t-mult", "3"], notes)
    assert not any(n.startswith("warning: --t-mult") for n in notes)
    notes = []
    resolve(["train", "--dataset-path", "/d", "--min-lr", "0.00001"], notes)  # scheduler: the default onecycle
    assert any(n.startswith("warning: --min-lr 1e-05 has no effect with the onecycle schedule") for n in notes)
    notes = []
    resolve(["train", "--dataset-path", "/d", "--ema-decay", "0.99", "--skip-stage1"], notes)
    assert "warning: --ema-decay 0.99 without --use-ema: EMA is off, the decay is unused" in notes
    assert ("warning: --skip-stage1 without --resume-from: stage 2 starts from the initial weights, not from a "
            "stage-1 model") in notes
    config = resolve(["train", "--dataset-path", "/d", "--num-experts", "0", "--backbone", "timm:resnet18"])
    assert config.model.seg.moe.enabled is False and config.model.backbone == "timm:resnet18"
    assert resolve(["train", "--dataset-path", "/d", "--backbone", "mit_b0"]).model.backbone == "mit_b0"


@pytest.mark.parametrize(("argv", "expected"), [
    (["--data", "/d", "--dataset-path", "/d"],
     "--data is a CrossAttentionDet-script flag, --dataset-path a camoXpert one: use one set"),
    (["--dataset-path", "/d", "--cssa-stages", "3"], "--cssa-stages is a CrossAttentionDet-script flag"),
    (["--dataset-path", "/d", "--resume-from", "{tmp}/absent.pth"],
     "--resume-from {tmp}/absent.pth: no such file or directory"),
    (["--dataset-path", "/d", "--stage1-epochs", "120"], "--stage1-epochs 120 must be less than --epochs 120"),
    (["--dataset-path", "/d", "--epochs", "20"], "--stage1-epochs 30 must be less than --epochs 20"),
    (["--dataset-path", "/d", "--stage2-lr", "0"], "--stage2-lr 0: the learning rate must be > 0"),
    (["--dataset-path", "/d", "--batch-size", "0"], "--batch-size 0: must be a whole number >= 1"),
    (["--dataset-path", "/d", "--device", "gpu"], "--device gpu: expected auto, cpu, cuda or cuda:N"),
    (["--dataset-path", "/d", "--warmup-epochs", "90"], "--warmup-epochs 90 must be less than stage 2's 90 epochs"),
    (["--dataset-path", "/d", "--stage2-lr", "0.001", "train.phases.1.lr=0.002"],
     "--stage2-lr 0.001 conflicts with the override train.phases.1.lr=0.002"),
    (["--dataset-path", "/d", "data.root=/e"], "--dataset-path /d conflicts with the override data.root=/e"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_bad_flags_are_one_error_line(argv: list[str], expected: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", *(a.replace("{tmp}", str(tmp_path)) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected.replace("{tmp}", str(tmp_path)) in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written, no run directory


def test_compatible_overrides_and_defaults_they_replace() -> None:
    # the same value twice is no conflict; a default the flags bring along is overridable
    config = resolve(["train", "--dataset-path", "/d", "data.root=/d", "train.phases.1.freeze=progressive",
                      "train.precision=bf16"])
    assert config.train.phases[1].freeze == "progressive" and config.train.precision == "bf16"


def test_the_seed_000_flags_keep_their_meaning_without_camoxpert_flags() -> None:
    args = parse_command_line(build_parser(), ["train", "--epochs", "3", "--batch-size", "4", "--lr", "0.01",
                                               "--backbone", "mit_b0"])
    assert camoxpert_overrides(args, [], []) == (None, [])
    config = resolve(["train", "--epochs", "3", "--batch-size", "4", "--lr", "0.01", "--backbone", "mit_b0"])
    assert (config.task, config.train.epochs, config.train.batch_size, config.train.lr) == ("detect", 3, 4, 0.01)
    assert config.model.backbone == "mit_b0" and config.train.phases == []
    # the same four with a camoXpert flag: stage-1 batch and lr, total epochs, a timm name
    config = resolve(["train", "--epochs", "40", "--batch-size", "4", "--lr", "0.01", "--backbone", "edgenext_small",
                      "--dataset-path", "/d"])
    assert (config.train.epochs, config.train.batch_size, config.train.phases[0].batch_size) == (40, 2, 4)
    assert config.train.phases[0].lr == 0.01 and config.model.backbone == "timm:edgenext_small"


def test_generic_flags_alone_keep_the_default_run() -> None:
    """--seed, --device, --num-workers, ... mean their plain keys; alone they are not a camoXpert command."""
    config = resolve(["train", "--seed", "3", "--num-workers", "0", "--use-ema", "--ema-decay", "0.99"])
    assert (config.task, config.seed, config.data.loader.num_workers) == ("detect", 3, 0)
    assert config.train.ema.enabled and config.train.ema.decay == 0.99 and config.train.phases == []
    with pytest.raises(ConfigError, match="--seed conflicts with the override seed=4"):
        resolve(["train", "--seed", "3", "seed=4"])


def test_the_conservative_command_trains_from_a_stage1_run(tmp_path: Path) -> None:
    """End to end on a lookalike COD10K tree: stage 1 with the document's flags (a tiny timm backbone, tiny
    images, 2 epochs), then the Conservative command itself (--resume-from that run's best.pt --skip-stage1)."""
    pytest.importorskip("timm")
    data = cod10k_tree(tmp_path / "COD10K-v3")
    tiny = ["--backbone", "edgenext_xx_small", "--img-size", "32", "--epochs", "2", "--stage1-epochs", "1",
            "--batch-size", "4", "--stage2-batch-size", "2", "--num-workers", "0", "--device", "cpu",
            "model.seg.unet_channels=[24,16,8]", "model.seg.head_channels=8", "model.seg.moe.num_experts=3",
            "eval.bootstrap=0", "eval.plots=false", "eval.speed=false", "eval.panels=0", "output.tensorboard=false",
            "data.split.val=0.3", "data.split.train=0.7", "data.split.test=0"]
    stage1 = tmp_path / "work" / "checkpoints"
    assert main(["train", "--dataset-path", str(data), "--checkpoint-dir", str(stage1), *tiny]) == 0
    best = stage1 / "checkpoints" / "best.pt"
    argv = cadet_argv(CONSERVATIVE, {"data": data, "weights": best, "ckpt": tmp_path / "work"})
    argv = [a for a in argv if a != "--num-experts" and a != "7"]  # model.seg.moe.num_experts=3 from `tiny`
    for flag in ("--backbone", "--img-size", "--epochs", "--stage1-epochs", "--batch-size", "--stage2-batch-size",
                 "--num-workers"):
        i = argv.index(flag)
        del argv[i:i + 2]
    assert main([*argv, *tiny]) == 0
    run = tmp_path / "work" / "checkpoints_batch8"
    log = (run / "training.log").read_text()
    assert "starting at phase 2 (stage2, epoch 2)" in log and "model.init_from: loaded" in log
    with (run / "metrics.csv").open() as f:
        rows = list(__import__("csv").DictReader(f))
    assert [r["epoch"] for r in rows] == ["2"] and rows[0]["phase"] == "stage2"
    assert float(rows[0]["lr_backbone"]) == pytest.approx(0.1 * float(rows[0]["lr"]))
    assert "moe1_cv" in rows[0] and (run / "final_results.json").is_file()
