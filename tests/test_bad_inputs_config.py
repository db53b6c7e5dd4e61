"""Bad configs, conflicting `cadet train` flags and non-checkpoints for `cadet convert-original`: each is one
`error:` line on stderr naming the key or file, exit status 2, no traceback, and nothing written (the error
comes before any data generation or training)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import crossattentiondet.compat  # noqa: F401 - imported here so no test case pays for loading the models
from crossattentiondet.cli import build_parser, main
from crossattentiondet.cli.train_cmd import seed_flag_overrides
from crossattentiondet.config import load_config

FileSpec = bytes | Callable[[Path], None]


def _torch_file(obj: object) -> Callable[[Path], None]:
    return lambda path: torch.save(obj, path)


# (id, argv ("{tmp}" is the test's folder), files to write under it, words the error line must contain)
CASES: list[tuple[str, list[str], dict[str, FileSpec], list[str]]] = [
    # 1. MiT widths that the attention heads do not divide, with the heads of the overrides or of the backbone
    ("mit dims vs override heads", ["config", "model.mit.embed_dims=[32,100,160,256]", "model.mit.num_heads=[1,3,5,8]"],
     {}, ["model.mit.embed_dims", "stage 2", "100 channels", "3 heads"]),
    ("mit dims vs backbone heads", ["config", "model.backbone=mit_b0", "model.mit.embed_dims=[32,64,161,256]"],
     {}, ["model.mit.embed_dims", "stage 3", "161 channels", "5 heads", "mit_b0"]),
    ("mit heads vs backbone dims", ["config", "model.mit.num_heads=[1,2,7,8]"],
     {}, ["model.mit.num_heads", "stage 3", "7 heads", "320 channels"]),
    ("mit dims in a file", ["config", "--config", "{tmp}/mit.yaml"],
     {"mit.yaml": b"model:\n  mit:\n    embed_dims: [30, 64, 160, 256]\n    num_heads: [4, 2, 5, 8]\n"},
     ["mit.yaml", "model.mit.embed_dims", "stage 1"]),
    ("mit dims, train", ["train", "model.mit.embed_dims=[32,100,160,256]", "model.mit.num_heads=[1,3,5,8]",
                         "data.root={tmp}/data"], {}, ["model.mit.embed_dims", "stage 2"]),
    # 2. infinities (and nan) in float fields
    ("lr inf", ["config", "train.lr=inf"], {}, ["train.lr", "finite"]),
    ("lr -inf", ["config", "train.lr=-inf"], {}, ["train.lr", "finite"]),
    ("lr .inf (YAML)", ["config", "train.lr=.inf"], {}, ["train.lr", "finite"]),
    ("lr nan", ["config", "train.lr=nan"], {}, ["train.lr", "finite"]),
    ("lr inf, train", ["train", "train.lr=inf", "data.root={tmp}/data"], {}, ["train.lr", "finite"]),
    ("lr flag inf, train", ["train", "--lr", "inf", "data.root={tmp}/data"], {}, ["train.lr", "finite"]),
    ("grad_clip inf", ["config", "train.grad_clip=inf"], {}, ["train.grad_clip", "finite"]),
    ("unbounded float nan", ["config", "model.fusion.frm_ffm.lambda_c=nan"], {}, ["model.fusion.frm_ffm.lambda_c"]),
    ("float in a list inf", ["config", "data.augment.thermal_gain=[0.5,inf]"], {}, ["data.augment.thermal_gain"]),
    ("lr inf in a file", ["config", "--config", "{tmp}/inf.yaml"], {"inf.yaml": b"train:\n  lr: .inf\n"},
     ["inf.yaml", "train.lr", "finite"]),
    # 3. every modality zeroed
    ("zero every modality", ["config", "model.zero_modalities=[rgb,thermal,event]"], {},
     ["model.zero_modalities", "see nothing"]),
    ("zero the only modality", ["config", "model.streams=[[thermal]]", "model.zero_modalities=[thermal]"], {},
     ["model.zero_modalities", "thermal"]),
    ("zero every modality, train", ["train", "model.zero_modalities=[rgb,thermal,event]", "data.root={tmp}/data"],
     {}, ["model.zero_modalities"]),
    # 4. binary or non-UTF-8 config files
    ("binary yaml", ["config", "--config", "{tmp}/bin.yaml"], {"bin.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"},
     ["bin.yaml", "not a text file"]),
    ("latin-1 yaml", ["config", "--config", "{tmp}/latin1.yaml"], {"latin1.yaml": b"name: caf\xe9\n"},
     ["latin1.yaml", "not a UTF-8 text file"]),
    ("latin-1 json", ["config", "--config", "{tmp}/latin1.json"], {"latin1.json": b'{"name": "caf\xe9"}'},
     ["latin1.json", "not a UTF-8 text file"]),
    ("binary config, train", ["train", "--config", "{tmp}/bin.yaml"], {"bin.yaml": b"\xff\xfe\x00n\x00a"},
     ["bin.yaml", "not a text file"]),
    ("broken yaml is one line", ["config", "--config", "{tmp}/bad.yaml"], {"bad.yaml": b"train: [unclosed\n"},
     ["bad.yaml", "not valid YAML", "line 2"]),
    # 5. duplicate keys at any depth
    ("yaml duplicate top key", ["config", "--config", "{tmp}/dup.yaml"],
     {"dup.yaml": b"train:\n  lr: 0.1\nname: a\ntrain:\n  epochs: 2\n"},
     ["dup.yaml", "duplicate key 'train'", "line 4", "first at line 1"]),
    ("yaml duplicate nested key", ["config", "--config", "{tmp}/dup.yaml"],
     {"dup.yaml": b"model:\n  fusion:\n    type: cssa\n    stages: [3]\n    type: gaff\n"},
     ["dup.yaml", "duplicate key 'type'", "line 5", "first at line 3"]),
    ("yaml duplicate key in a list item", ["config", "--config", "{tmp}/dup.yaml"],
     {"dup.yaml": b"data:\n  modalities:\n    - name: rgb\n      channels: 3\n      name: x\n"},
     ["dup.yaml", "duplicate key 'name'", "line 5"]),
    ("yaml duplicate in a base file", ["config", "--config", "{tmp}/exp.yaml"],
     {"exp.yaml": b"base: base.yaml\nname: x\n", "base.yaml": b"train:\n  lr: 0.1\n  lr: 0.2\n"},
     ["base.yaml", "duplicate key 'lr'", "line 3"]),
    ("json duplicate nested key", ["config", "--config", "{tmp}/dup.json"],
     {"dup.json": b'{"train": {"lr": 0.1,\n  "epochs": 2,\n  "lr": 0.2}}'},
     ["dup.json", "duplicate key 'lr'", "line 3"]),
    ("json duplicate top key", ["config", "--config", "{tmp}/dup.json"],
     {"dup.json": b'{"model": {"fusion": {"cssa": {"kernel_size": 3}}},\n "name": "a",\n "name": "b"}'},
     ["dup.json", "duplicate key 'name'", "line 3"]),
    ("json duplicate, train", ["train", "--config", "{tmp}/dup.json"], {"dup.json": b'{"name": "a", "name": "b"}'},
     ["dup.json", "duplicate key 'name'", "line 1"]),
    # 6. repeated class names
    ("duplicate class names", ["config", "data.names=[a,a,b]"], {}, ["data.names", "'a'"]),
    ("duplicate class names in a file", ["config", "--config", "{tmp}/n.yaml"],
     {"n.yaml": b"data:\n  names: [person, car, person, car, bike]\n"}, ["n.yaml", "data.names", "'car'", "'person'"]),
    # 7. conflicting `cadet train` flags
    ("--model gaff with --cssa-stages", ["train", "--model", "gaff", "--cssa-stages", "3"], {},
     ["--model gaff", "--cssa-stages"]),
    ("--model early_fusion with --gaff-stages", ["train", "--model", "early_fusion", "--gaff-stages", "3"], {},
     ["--model early_fusion", "--gaff-stages"]),
    ("--model baseline with --cssa-thresh", ["train", "--model", "baseline", "--cssa-thresh", "0.3"], {},
     ["--model baseline", "--cssa-thresh"]),
    ("--cssa with --gaff", ["train", "--cssa-stages", "3", "--gaff-stages", "2"], {}, ["--cssa-stages", "--gaff-stages"]),
    ("--data with data.root", ["train", "--data", "{tmp}/x", "data.root={tmp}/y"], {}, ["--data", "data.root"]),
    ("--data with data.images_dir", ["train", "--data", "{tmp}/x", "data.images_dir={tmp}/y"], {},
     ["--data", "data.images_dir"]),
    ("--data with data.labels", ["train", "--data", "{tmp}/x", "data.labels={tmp}/y"], {}, ["--data", "data.labels"]),
    ("--labels with data.labels", ["train", "--data", "{tmp}/x", "--labels", "{tmp}/l", "data.labels={tmp}/m"], {},
     ["--labels", "data.labels"]),
    ("--output-dir with name", ["train", "--output-dir", "{tmp}/runs/a", "name=b"], {}, ["--output-dir", "name=b"]),
    ("--output-dir with output.root", ["train", "--output-dir", "{tmp}/runs/a", "output.root={tmp}/o"], {},
     ["--output-dir", "output.root"]),
    ("--epochs with train.epochs", ["train", "--epochs", "3", "train.epochs=4"], {}, ["--epochs 3", "train.epochs=4"]),
    ("--lr with train.lr", ["train", "--lr", "0.1", "train.lr=0.2"], {}, ["--lr 0.1", "train.lr=0.2"]),
    ("--lr with a train section", ["train", "--lr", "0.1", "train={lr: 0.2}"], {}, ["--lr 0.1", "train.lr"]),
    ("--batch-size with train.batch_size", ["train", "--batch-size", "2", "train.batch_size=4"], {},
     ["--batch-size 2", "train.batch_size"]),
    ("--backbone with model.backbone", ["train", "--backbone", "mit_b0", "model.backbone=mit_b2"], {},
     ["--backbone mit_b0", "model.backbone"]),
    ("--cssa-stages with model.fusion.stages", ["train", "--cssa-stages", "3", "model.fusion.stages=[2]"], {},
     ["--cssa-stages 3", "model.fusion.stages"]),
    ("--model with model.fusion.type", ["train", "--model", "cssa", "model.fusion.type=gaff"], {},
     ["--model cssa", "model.fusion.type"]),
    ("study spec with a duplicate key", ["study", "run", "{tmp}/s.yaml"], {"s.yaml": b"name: a\nseeds: [0]\nname: b\n"},
     ["study spec", "s.yaml", "duplicate key 'name'", "line 3"]),
    ("study spec not UTF-8", ["study", "run", "{tmp}/s.yaml"], {"s.yaml": b"name: caf\xe9\n"},
     ["study spec", "s.yaml", "not a UTF-8 text file"]),
    ("demo --out is a file", ["demo", "--out", "{tmp}/f.txt"], {"f.txt": b"x"}, ["--out", "f.txt", "is a file"]),
    # 8. convert-original on files that are not original checkpoints
    ("convert random bytes", ["convert-original", "{tmp}/r.pth", "{tmp}/out.pt"],
     {"r.pth": random.Random(0).randbytes(512)}, ["r.pth", "not a PyTorch file", "not an original checkpoint"]),
    ("convert a text file", ["convert-original", "{tmp}/t.pth", "{tmp}/out.pt"],
     {"t.pth": b"epochs: 3\nthis is text, not a checkpoint\n"}, ["t.pth", "a text file"]),
    ("convert an empty file", ["convert-original", "{tmp}/e.pth", "{tmp}/out.pt"], {"e.pth": b""},
     ["e.pth", "empty file"]),
    ("convert a torch list", ["convert-original", "{tmp}/l.pth", "{tmp}/out.pt"],
     {"l.pth": _torch_file([torch.zeros(2), 3])}, ["l.pth", "a list of 2"]),
    ("convert a torch tensor", ["convert-original", "{tmp}/t.pth", "{tmp}/out.pt"],
     {"t.pth": _torch_file(torch.zeros(2, 3))}, ["t.pth", "a single tensor"]),
    ("convert a dict without weights", ["convert-original", "{tmp}/d.pth", "{tmp}/out.pt"],
     {"d.pth": _torch_file({"epoch": 3, "optimizer": {"lr": 0.1}})}, ["d.pth", "'epoch'", "no model state dict"]),
    ("convert an encoder state dict", ["convert-original", "{tmp}/enc.pth", "{tmp}/out.pt"],
     {"enc.pth": _torch_file({"patch_embed1.proj.weight": torch.zeros(4, 3, 7, 7)})},
     ["enc.pth", "encoder", "roi_heads.box_predictor.cls_score.weight"]),
    ("convert a CrossAttentionDet checkpoint", ["convert-original", "{tmp}/ours.pt", "{tmp}/out.pt"],
     {"ours.pt": _torch_file({"format": "crossattentiondet-checkpoint", "version": 1,
                              "model": {"w": torch.zeros(1)}, "config": {}})},
     ["ours.pt", "already a CrossAttentionDet checkpoint"]),
]


@pytest.mark.parametrize(("argv", "files", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(argv: list[str], files: dict[str, FileSpec], expected: list[str],
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    for name, content in files.items():
        if callable(content):
            content(tmp_path / name)
        else:
            (tmp_path / name).write_bytes(content)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a run directory or synthetic data made by mistake would land here
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("error: ")
    for word in expected:
        assert word in err, (word, err)
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output file, no run directory


@pytest.mark.parametrize("argv", [
    ["--model", "cssa", "--cssa-stages", "3"],
    ["--model", "gaff", "--gaff-stages", "2,3", "--gaff-se-reduction", "8"],
    ["--cssa-stages", "3", "model.fusion.flow=separate", "model.drop_path_rate=0.1"],  # defaults it brings along
    ["--data", "/d", "data.layout=folders"],
    ["--data", "/d", "data.root=/d"],  # the same value twice
    ["--epochs", "3", "--lr", "0.1", "train.batch_size=4", "train.lr_scaling=linear"],  # train.lr_* is not train.lr
    ["--backbone", "mit_b0", "model.backbone=mit_b0"],  # the same value twice
    ["--epochs", "3", "train.epochs=3"],
    ["--output-dir", "runs/x", "output.tensorboard=false"],
], ids=lambda a: " ".join(a))
def test_compatible_train_flags_and_overrides_are_accepted(argv: list[str]) -> None:
    args = build_parser().parse_args(["train", *argv])
    overrides = seed_flag_overrides(args, [], list(args.overrides))
    assert all("=" in text for text in overrides)


def test_flags_still_apply_before_overrides() -> None:
    args = build_parser().parse_args(["train", "--cssa-stages", "3", "model.fusion.flow=separate"])
    overrides = seed_flag_overrides(args, [], list(args.overrides))
    config = load_config(None, overrides + list(args.overrides))
    assert (config.model.fusion.type, config.model.fusion.stages) == ("cssa", [3])
    assert config.model.fusion.flow == "separate"  # the explicit override, applied after, wins


def test_config_mit_widths_build_the_model_variants() -> None:
    from crossattentiondet.config import MIT_WIDTHS
    from crossattentiondet.models.mit import MIT_VARIANTS

    assert MIT_WIDTHS == {name: (spec.embed_dims, spec.num_heads) for name, spec in MIT_VARIANTS.items()}
    assert MIT_VARIANTS["mit_b2"].depths == (3, 4, 6, 3) and MIT_VARIANTS["mit_b0"].embed_dims == (32, 64, 160, 256)


def test_an_override_right_after_resume_is_an_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cadet train --resume train.epochs=30`: argparse hands the override to --resume as its path."""
    seen: dict[str, object] = {}

    def fake_train(config, resume=False):  # noqa: ANN001, ANN202
        seen.update(config=config, resume=resume)
        raise SystemExit(0)

    monkeypatch.setattr("crossattentiondet.engine.trainer.train", fake_train)
    with pytest.raises(SystemExit):
        main(["train", "--resume", "train.epochs=30", f"output.root={tmp_path}"])
    assert seen["resume"] is True and seen["config"].train.epochs == 30
