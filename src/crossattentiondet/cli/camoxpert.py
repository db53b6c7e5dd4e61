"""camoXpert's ``train_ultimate.py train`` flags (seeds/004), accepted by ``cadet train`` and ``cadet config``.

The document's three commands (Conservative, Aggressive, Maximum) run as they are written, with ``cadet train``
in place of ``python train_ultimate.py train``::

    cadet train --dataset-path /data/COD10K-v3 --checkpoint-dir runs/batch8 \\
        --resume-from runs/stage1/checkpoints/best.pt --skip-stage1 --backbone edgenext_base --num-experts 7 \\
        --batch-size 8 --stage2-batch-size 2 --accumulation-steps 2 --img-size 384 --epochs 120 \\
        --stage1-epochs 30 --lr 0.0004 --stage2-lr 0.00018 --scheduler cosine --min-lr 0.00001 \\
        --progressive-unfreeze --deep-supervision --num-workers 4

``cadet config --json`` with the same flags prints the config that would train, phases included.

How the flags resolve:

* camoXpert mode is on when any camoXpert-only flag is given (every flag below except ``--epochs``,
  ``--batch-size``, ``--lr`` and ``--backbone``). Those four are shared with the CrossAttentionDet scripts'
  flags (seeds/000): with a camoXpert-only flag they mean what train_ultimate.py meant (total epochs of both
  stages, stage-1 batch, stage-1 lr, a timm model name), else what they always meant (``train.epochs``,
  ``train.batch_size``, ``train.lr``, ``model.backbone``).
* Without ``--config`` the run starts from ``preset:camoxpert`` and every camoXpert flag left out takes
  train_ultimate.py's own default (:data:`ORIGINAL_DEFAULTS`: batch 2, stage-2 batch = batch // 2,
  accumulation 4, scheduler onecycle, lr 2.5e-4, stage-2 lr = lr, min lr 1e-6, ...; the switches off), so an
  original command trains what train_ultimate.py would have trained. The precision is fp16 (the original's
  AMP) on CUDA, fp32 elsewhere.
* With ``--config FILE`` only the flags given change the file (which then needs the two ``train.phases``
  the stage flags address).
* Explicit ``key=value`` overrides come after the flags and win over the defaults the flags bring along; an
  override of a key that a given flag sets is an error, and so is mixing camoXpert flags with the
  CrossAttentionDet-only flags (``--data``, ``--labels``, ``--model``, ``--cssa-*``, ``--gaff-*``,
  ``--output-dir``).

Flag -> config key: ``--dataset-path`` data.root; ``--checkpoint-dir D`` the run directory (output.root = its
parent, name = its name); ``--resume-from P`` model.init_from (weights only: ``cadet train --resume RUN``
continues a run of this project exactly); ``--skip-stage1`` train.start_phase=2; ``--backbone NAME``
model.backbone=timm:NAME; ``--num-experts N`` model.seg.moe (0: off); ``--batch-size`` /
``--stage2-batch-size`` train.phases.0/1.batch_size; ``--accumulation-steps`` both phases' accumulation;
``--img-size`` model.seg.size; ``--epochs`` train.epochs; ``--stage1-epochs`` train.phases.0.epochs (stage 2
gets the rest); ``--lr`` / ``--stage2-lr`` train.phases.0/1.lr; ``--scheduler`` both phases' schedule.type
(none: constant); ``--min-lr`` and ``--t-mult`` both phases' schedule; ``--warmup-epochs`` stage 2's
schedule.warmup_epochs (stage 2 only, as the original); ``--progressive-unfreeze`` train.phases.1.freeze;
``--deep-supervision`` model.seg.deep_supervision; ``--gradient-checkpointing`` model.grad_checkpointing;
``--use-ema`` / ``--ema-decay`` train.ema; ``--weight-decay`` train.optimizer.weight_decay; ``--num-workers``
data.loader.num_workers; ``--seed`` seed; ``--device`` train.device. Stage 1 always trains with the backbone
frozen and stage 2 with the backbone at 0.1x the lr (the original's two parameter groups).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossattentiondet.config import ConfigError

if TYPE_CHECKING:
    from crossattentiondet.config import ExperimentConfig

PRESET = "preset:camoxpert"

# the flags shared with the CrossAttentionDet scripts (seeds/000): their meaning depends on the mode
SHARED = ("epochs", "batch_size", "lr", "backbone")
# camoXpert-only flags (dest names), in the order they are registered; any of them turns camoXpert mode on
CAMO_ONLY = ("dataset_path", "checkpoint_dir", "resume_from", "skip_stage1", "num_experts", "stage2_batch_size",
             "accumulation_steps", "img_size", "stage1_epochs", "stage2_lr", "scheduler", "min_lr",
             "warmup_epochs", "t_mult", "progressive_unfreeze", "deep_supervision", "gradient_checkpointing",
             "use_ema", "ema_decay", "weight_decay", "num_workers", "seed", "device")
# flags with one obvious meaning in any run: alone they do not turn camoXpert mode on (`cadet train --seed 3` is
# the default run with seed 3, not a camoXpert one); with camoXpert flags they take part in its defaults
GENERIC = {"seed": "seed", "device": "train.device", "num_workers": "data.loader.num_workers",
           "weight_decay": "train.optimizer.weight_decay", "use_ema": "train.ema.enabled",
           "ema_decay": "train.ema.decay", "gradient_checkpointing": "model.grad_checkpointing"}
# the CrossAttentionDet scripts' flags that camoXpert has not: never together with camoXpert flags
SEED_ONLY = ("data", "labels", "model", "cssa_stages", "cssa_thresh", "cssa_kernel", "gaff_stages",
             "gaff_se_reduction", "gaff_inter_shared", "gaff_merge_bottleneck", "output_dir")
SWITCHES = ("skip_stage1", "progressive_unfreeze", "deep_supervision", "gradient_checkpointing", "use_ema")

# train_ultimate.py's argparse defaults (SEED004.md "CLI defaults"); the switches default to off, the stage-2
# batch to batch // 2 (at least 1) and the stage-2 lr to --lr
ORIGINAL_DEFAULTS: dict[str, Any] = {
    "backbone": "edgenext_base", "num_experts": 7, "batch_size": 2, "accumulation_steps": 4, "img_size": 384,
    "epochs": 120, "stage1_epochs": 30, "lr": 2.5e-4, "scheduler": "onecycle", "min_lr": 1e-6,
    "warmup_epochs": 0, "t_mult": 2, "use_ema": False, "ema_decay": 0.999, "weight_decay": 1e-4, "seed": 42,
    "num_workers": 4,
}
SCHEDULERS = ("onecycle", "cosine", "cosine_restart", "none")
_SCHEDULE_TYPE = {"onecycle": "onecycle", "cosine": "cosine", "cosine_restart": "cosine_restart", "none": "constant"}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_NO_VALUE = object()


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def add_camoxpert_flags(parser: argparse.ArgumentParser) -> None:
    """Register camoXpert's flags (an argument group "camoXpert flags (seeds/004)").

    ``--epochs``, ``--batch-size``, ``--lr`` and ``--backbone`` are registered here only when ``parser`` does not
    have them yet (``cadet train`` registers them with the CrossAttentionDet scripts' flags); every flag
    defaults to None (a switch: None, or True when given), so "not given" can be told from a value.
    """
    g = parser.add_argument_group(
        "camoXpert flags (seeds/004)",
        "train_ultimate.py's flags: `cadet train` in place of `python train_ultimate.py train` runs its commands. "
        "Any flag of this group except --epochs/--batch-size/--lr/--backbone turns camoXpert mode on: those "
        "four then mean total epochs, stage-1 batch, stage-1 lr and a timm model name. Without --config the run "
        "starts from preset:camoxpert and every flag left out takes train_ultimate.py's default (batch 2, stage-2 "
        "batch = batch // 2, accumulation 4, scheduler onecycle, lr 2.5e-4, min lr 1e-6, epochs 120, stage 1 30, "
        "seed 42, switches off; fp16 on CUDA); with --config only the flags given change the file. Not "
        "combinable with --data/--labels/--model/--cssa-*/--gaff-*/--output-dir.")
    have = parser._option_string_actions  # noqa: SLF001 - argparse offers no public lookup
    g.add_argument("--dataset-path", metavar="DIR", help="COD10K-v3 (or SINet pack) root (data.root)")
    g.add_argument("--checkpoint-dir", metavar="DIR",
                   help="run directory (output.root = its parent, name = its name); checkpoints in DIR/checkpoints")
    g.add_argument("--resume-from", metavar="PATH",
                   help="start from these weights (model.init_from: tensors with matching names and shapes; weights "
                        "only: `cadet train --resume RUN` continues a run exactly)")
    g.add_argument("--skip-stage1", action="store_true", default=None,
                   help="begin at stage 2 (train.start_phase=2), normally with --resume-from")
    if "--backbone" not in have:
        g.add_argument("--backbone", help="timm model name (model.backbone=timm:NAME); default edgenext_base")
    g.add_argument("--num-experts", type=int, metavar="N", help="experts per scale (model.seg.moe; 0: no MoE); default 7")
    if "--batch-size" not in have:
        g.add_argument("--batch-size", type=int, help="stage-1 batch (train.phases.0.batch_size); default 2")
    g.add_argument("--stage2-batch-size", type=int, metavar="N",
                   help="stage-2 batch (train.phases.1.batch_size); default --batch-size // 2")
    g.add_argument("--accumulation-steps", type=int, metavar="N", help="gradient accumulation of both stages; default 4")
    g.add_argument("--img-size", type=int, metavar="PX", help="square input size (model.seg.size); default 384")
    if "--epochs" not in have:
        g.add_argument("--epochs", type=int, help="epochs of both stages (train.epochs); default 120")
    g.add_argument("--stage1-epochs", type=int, metavar="N",
                   help="stage-1 epochs (train.phases.0.epochs; stage 2 gets the rest); default 30")
    if "--lr" not in have:
        g.add_argument("--lr", type=float, help="stage-1 lr (train.phases.0.lr); default 2.5e-4")
    g.add_argument("--stage2-lr", type=float, metavar="LR",
                   help="stage-2 lr of the heads (train.phases.1.lr; the backbone trains at 0.1x); default --lr")
    g.add_argument("--scheduler", choices=SCHEDULERS, help="both stages' schedule (none: constant); default onecycle")
    g.add_argument("--min-lr", type=float, metavar="LR", help="floor of cosine / cosine_restart; default 1e-6")
    g.add_argument("--warmup-epochs", type=float, metavar="N",
                   help="linear warmup at the start of stage 2 (stage 2 only, as the original); default 0")
    g.add_argument("--t-mult", type=float, metavar="X", help="cosine_restart: cycle length factor; default 2")
    g.add_argument("--progressive-unfreeze", action="store_true", default=None,
                   help="stage 2 unfreezes the backbone stage by stage, last first (else all at once)")
    g.add_argument("--deep-supervision", action="store_true", default=None,
                   help="extra heads at 1/16, 1/8, 1/4 (model.seg.deep_supervision)")
    g.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute activations to save memory (model.grad_checkpointing)")
    g.add_argument("--use-ema", action="store_true", default=None, help="validate an EMA of the weights (train.ema)")
    g.add_argument("--ema-decay", type=float, metavar="D", help="EMA decay (train.ema.decay); default 0.999")
    g.add_argument("--weight-decay", type=float, metavar="WD", help="AdamW weight decay; default 1e-4")
    g.add_argument("--num-workers", type=int, metavar="N", help="data loader workers; default 4")
    g.add_argument("--seed", type=int, help="random seed; default 42")
    g.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N (train.device); default auto")


def camoxpert_flags_given(args: argparse.Namespace) -> list[str]:
    """The camoXpert-only flags given on the command line (as ``--flag`` names); none but :data:`GENERIC`
    ones: not camoXpert mode (empty)."""
    given = [_flag(d) for d in CAMO_ONLY if getattr(args, d, None) is not None]
    return given if any(flag[2:].replace("-", "_") not in GENERIC for flag in given) else []


def generic_overrides(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(flag, override) of the :data:`GENERIC` flags given outside camoXpert mode: their plain config keys."""
    out = []
    for dest, key in GENERIC.items():
        value = getattr(args, dest, None)
        if value is not None:
            out.append((_flag(dest), f"{key}={str(value).lower() if isinstance(value, bool) else value}"))
    return out


def camoxpert_mode(args: argparse.Namespace) -> bool:
    return bool(camoxpert_flags_given(args))


# ------------------------------------------------------------------------------------------ resolution
class _Plan:
    """The overrides the flags produce: (flag text, override, whether an explicit override of it conflicts)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, bool]] = []

    def add(self, flag_text: str | None, text: str) -> None:
        """``flag_text`` None: a default the flags bring along (an explicit override may change it)."""
        self.items.append((flag_text or "", text, flag_text is not None))


def _show(value: Any) -> str:
    """A flag's value as the user would type it (3, not 3.0)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _quoted(text: str) -> str:
    """A YAML single-quoted string: a path stays a string whatever it holds (': ', '#', digits only)."""
    return "'" + str(text).replace("'", "''") + "'"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _explicit_value(explicit: list[str], key: str) -> Any:
    from crossattentiondet.config import parse_override

    found = _NO_VALUE
    for text in explicit:
        path, value = parse_override(text)
        if ".".join(path) == key:
            found = value
    return found


def _tree_get(tree: dict[str, Any] | None, *path: Any) -> Any:
    node: Any = tree
    for part in path:
        if isinstance(node, dict):
            node = node.get(part, _NO_VALUE)
        elif isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node):
            node = node[part]
        else:
            return _NO_VALUE
        if node is _NO_VALUE:
            return _NO_VALUE
    return node


def camoxpert_overrides(args: argparse.Namespace, notes: list[str],
                        explicit: list[str]) -> tuple[str | None, list[str]]:
    """camoXpert's flags as (base config, dotted overrides), the overrides coming before ``explicit`` ones.

    (None, []) when no camoXpert-only flag was given. Else the base is ``--config`` or ``preset:camoxpert``;
    without ``--config`` (and without ``--resume RUN``, whose own config is the base) every flag left out takes
    train_ultimate.py's default. Messages for the user are appended to ``notes`` ("warning: ..." when a flag
    does not do what it may seem to). Raises ConfigError naming the flag for a bad value, a missing
    ``--resume-from`` path, a flag and an explicit override of one key, or CrossAttentionDet-only flags.
    """
    given = camoxpert_flags_given(args)
    if not given:
        return None, []
    seed_only = [_flag(d) for d in SEED_ONLY if getattr(args, d, None) is not None]
    if seed_only:
        raise ConfigError(f"{seed_only[0]} is a CrossAttentionDet-script flag, {given[0]} a camoXpert one: use one "
                          "set (camoXpert: --dataset-path, --checkpoint-dir; CrossAttentionDet: --data, --output-dir)")
    config_path = getattr(args, "config", None)
    resume = getattr(args, "resume", False)
    defaults = not config_path and not isinstance(resume, str)  # --resume RUN: the run's config is the base
    tree = _read_tree(config_path) if config_path else None
    values = {d: getattr(args, d, None) for d in (*CAMO_ONLY, *SHARED)}
    is_given = {d for d, v in values.items() if v is not None}
    if defaults:
        for dest, value in ORIGINAL_DEFAULTS.items():
            if values[dest] is None:
                values[dest] = value
        for dest in SWITCHES:
            if values[dest] is None:
                values[dest] = False
        if values["stage2_batch_size"] is None:
            values["stage2_batch_size"] = max(1, values["batch_size"] // 2)
        if values["stage2_lr"] is None:
            values["stage2_lr"] = values["lr"]
        if values["device"] is None:
            values["device"] = "auto"
    _validate(values, is_given, tree, config_path, explicit)
    if defaults:
        _defaults_note(values, is_given, given, notes)
    phases = 2 if defaults else _phase_count(tree, config_path, is_given)

    def text(dest: str) -> str | None:
        """The flag as the user gave it (None for a default the flags bring along)."""
        if dest not in is_given:
            return None
        return _flag(dest) if dest in SWITCHES else f"{_flag(dest)} {_show(values[dest])}"

    plan = _Plan()
    v = values
    if v["dataset_path"] is not None:
        plan.add(text("dataset_path"), f"data.root={_quoted(v['dataset_path'])}")
    if v["checkpoint_dir"] is not None:
        run_dir = Path(v["checkpoint_dir"])
        if run_dir.name in ("", ".", ".."):
            run_dir = run_dir.resolve()
        if not run_dir.name:
            raise ConfigError(f"--checkpoint-dir {v['checkpoint_dir']}: name a folder for the run (e.g. runs/batch8)")
        plan.add(text("checkpoint_dir"), f"output.root={_quoted(str(run_dir.parent))}")
        plan.add(text("checkpoint_dir"), f"name={_quoted(run_dir.name)}")
        notes.append(f"--checkpoint-dir {v['checkpoint_dir']}: the run directory; checkpoints in "
                     f"{run_dir / 'checkpoints'} (best.pt, last.pt), not best_model.pth")
    if v["resume_from"] is not None:
        plan.add(text("resume_from"), f"model.init_from={_quoted(v['resume_from'])}")
        notes.append(f"--resume-from {v['resume_from']}: weights only (model.init_from): the tensors whose names and "
                     "shapes match this model are loaded and listed when the run starts; no epoch, optimizer or EMA "
                     "state is restored, as in train_ultimate.py. `cadet train --resume RUN` continues a run of this "
                     "project exactly")
    if v["skip_stage1"] is not None:
        if v["skip_stage1"] or defaults:
            plan.add(text("skip_stage1"), f"train.start_phase={2 if v['skip_stage1'] else 1}")
        if v["skip_stage1"]:
            _skip_notes(v, tree, explicit, notes, defaults)
    if v["backbone"] is not None:
        plan.add(text("backbone"), f"model.backbone={_quoted(_timm_name(v['backbone']))}")
    if v["num_experts"] is not None:
        if v["num_experts"] == 0:
            plan.add(text("num_experts"), "model.seg.moe.enabled=false")
        else:
            plan.add(text("num_experts"), "model.seg.moe.enabled=true")
            plan.add(text("num_experts"), f"model.seg.moe.num_experts={v['num_experts']}")
    for dest, index in (("batch_size", 0), ("stage2_batch_size", 1)):
        if v[dest] is not None:
            plan.add(text(dest), f"train.phases.{index}.batch_size={v[dest]}")
    if v["accumulation_steps"] is not None:
        for index in range(2):
            plan.add(text("accumulation_steps"), f"train.phases.{index}.accumulation={v['accumulation_steps']}")
    if v["img_size"] is not None:
        plan.add(text("img_size"), f"model.seg.size={v['img_size']}")
    if v["epochs"] is not None:
        plan.add(text("epochs"), f"train.epochs={v['epochs']}")
    if v["stage1_epochs"] is not None:
        plan.add(text("stage1_epochs"), f"train.phases.0.epochs={v['stage1_epochs']}")
    if (v["epochs"] is not None or v["stage1_epochs"] is not None) and phases:
        plan.add(None, f"train.phases.{phases - 1}.epochs=null")  # the last phase gets the rest
    for dest, index in (("lr", 0), ("stage2_lr", 1)):
        if v[dest] is not None:
            plan.add(text(dest), f"train.phases.{index}.lr={_yaml_scalar(float(v[dest]))}")
    for dest, key in (("scheduler", "type"), ("min_lr", "min_lr"), ("t_mult", "t_mult")):
        if v[dest] is not None:
            value = _SCHEDULE_TYPE[v[dest]] if dest == "scheduler" else _yaml_scalar(float(v[dest]))
            for index in range(2):
                plan.add(text(dest), f"train.phases.{index}.schedule.{key}={value}")
    if v["warmup_epochs"] is not None:
        plan.add(text("warmup_epochs"), f"train.phases.1.schedule.warmup_epochs={_yaml_scalar(float(v['warmup_epochs']))}")
        if defaults:
            plan.add(None, "train.phases.0.schedule.warmup_epochs=0.0")
    if v["progressive_unfreeze"] is not None and (v["progressive_unfreeze"] or defaults):
        plan.add(text("progressive_unfreeze"),
                 f"train.phases.1.freeze={'progressive' if v['progressive_unfreeze'] else 'none'}")
    if defaults:
        # the original's stages: backbone frozen in stage 1; stage 2's backbone group at 0.1x its lr
        plan.add(None, "train.phases.0.freeze=backbone")
        plan.add(None, "train.phases.1.backbone_lr_mult=0.1")
    for dest, key in (("deep_supervision", "model.seg.deep_supervision"),
                      ("gradient_checkpointing", "model.grad_checkpointing"), ("use_ema", "train.ema.enabled")):
        if v[dest] is not None and (v[dest] or defaults):
            plan.add(text(dest), f"{key}={_yaml_scalar(bool(v[dest]))}")
    for dest, key in (("ema_decay", "train.ema.decay"), ("weight_decay", "train.optimizer.weight_decay")):
        if v[dest] is not None:
            plan.add(text(dest), f"{key}={_yaml_scalar(float(v[dest]))}")
    for dest, key in (("num_workers", "data.loader.num_workers"), ("seed", "seed"), ("device", "train.device")):
        if v[dest] is not None:
            plan.add(text(dest), f"{key}={v[dest]}")
    if defaults:
        plan.add(None, f"train.precision={_precision(v['device'], notes)}")
    _value_notes(v, is_given, tree, explicit, defaults, notes)
    _check_conflicts(plan, explicit)
    return (config_path or PRESET), [t for _, t, _ in plan.items]


def _read_tree(path: str) -> dict[str, Any]:
    from crossattentiondet.config import is_legacy, read_config_tree, translate_legacy

    tree = read_config_tree(path)
    return translate_legacy(tree) if is_legacy(tree) else tree


def _timm_name(name: str) -> str:
    from crossattentiondet.config import MIT_BACKBONES

    if name.startswith("timm:") or name in MIT_BACKBONES:
        return name
    return f"timm:{name}"


def _validate(v: dict[str, Any], is_given: set[str], tree: dict[str, Any] | None, config_path: str | None,
              explicit: list[str]) -> None:
    def bad(dest: str, rule: str) -> ConfigError:
        return ConfigError(f"{_flag(dest)} {_show(v[dest])}: {rule}")

    for dest in ("batch_size", "stage2_batch_size", "accumulation_steps", "epochs", "stage1_epochs"):
        if v[dest] is not None and v[dest] < 1:
            raise bad(dest, "must be a whole number >= 1")
    for dest in ("num_experts", "num_workers"):
        if v[dest] is not None and v[dest] < 0:
            raise bad(dest, "must be a whole number >= 0")
    if v["img_size"] is not None and v["img_size"] < 32:
        raise bad("img_size", "must be at least 32 pixels")
    for dest in ("lr", "stage2_lr", "min_lr", "warmup_epochs", "t_mult", "ema_decay", "weight_decay"):
        if v[dest] is not None and not math.isfinite(v[dest]):
            raise bad(dest, "must be a finite number")
    for dest in ("lr", "stage2_lr"):
        if v[dest] is not None and v[dest] <= 0:
            raise bad(dest, "the learning rate must be > 0")
    for dest in ("min_lr", "warmup_epochs", "weight_decay"):
        if v[dest] is not None and v[dest] < 0:
            raise bad(dest, "must be >= 0")
    if v["t_mult"] is not None and v["t_mult"] < 1:
        raise bad("t_mult", "must be >= 1 (each restart cycle at least as long as the one before)")
    if v["ema_decay"] is not None and not 0 < v["ema_decay"] < 1:
        raise bad("ema_decay", "must be between 0 and 1 (e.g. 0.999)")
    if v["device"] is not None and not _DEVICE.fullmatch(v["device"]):
        raise bad("device", "expected auto, cpu, cuda or cuda:N")
    if v["backbone"] is not None and (not v["backbone"].strip() or v["backbone"] == "timm:"):
        raise ConfigError(f"--backbone {v['backbone']!r}: name a timm model, e.g. edgenext_base")
    if v["resume_from"] is not None and not Path(v["resume_from"]).exists():
        raise ConfigError(f"--resume-from {v['resume_from']}: no such file or directory (the weights to start from: "
                          "a checkpoint file or a run directory)")
    # stage 1 must leave epochs to stage 2: the values of the flags, else of the file (or an override)
    epochs, epochs_src = _known(v, "epochs", tree, ("train", "epochs"), explicit, "train.epochs", config_path)
    stage1, stage1_src = _known(v, "stage1_epochs", tree, ("train", "phases", 0, "epochs"), explicit,
                                "train.phases.0.epochs", config_path)
    if isinstance(epochs, int) and isinstance(stage1, int):
        if stage1 >= epochs and {"epochs", "stage1_epochs"} & is_given:
            raise ConfigError(f"{stage1_src} must be less than {epochs_src}: stage 2 gets the epochs after stage 1")
        if "warmup_epochs" in is_given and 0 < epochs - stage1 <= v["warmup_epochs"]:
            raise ConfigError(f"--warmup-epochs {_show(v['warmup_epochs'])} must be less than stage 2's {epochs - stage1} "
                              f"epochs ({epochs_src} minus {stage1_src})")


def _known(v: dict[str, Any], dest: str, tree: dict[str, Any] | None, path: tuple[Any, ...], explicit: list[str],
           key: str, config_path: str | None) -> tuple[Any, str]:
    """A value and how to name it: the flag's (given or default), else an explicit override's, else the file's."""
    if v[dest] is not None:
        return v[dest], f"{_flag(dest)} {_show(v[dest])}"
    value = _explicit_value(explicit, key)
    if value is not _NO_VALUE:
        return value, f"{key}={value}"
    value = _tree_get(tree, *path)
    if value is not _NO_VALUE:
        return value, f"{key}={value} of {config_path}"
    return None, ""


_PHASE_FLAGS = {  # dest -> the number of train.phases it addresses
    "batch_size": 1, "lr": 1, "stage1_epochs": 2, "stage2_batch_size": 2, "stage2_lr": 2, "accumulation_steps": 2,
    "scheduler": 2, "min_lr": 2, "t_mult": 2, "warmup_epochs": 2, "progressive_unfreeze": 2, "skip_stage1": 2,
}


def _phase_count(tree: dict[str, Any] | None, config_path: str | None, is_given: set[str]) -> int:
    """--config FILE: the number of train.phases in the file, checked against what the given flags address.

    ``--resume RUN`` (no file to read): 2, the phases of a camoXpert run (a run of another shape fails with the
    override's own error)."""
    if tree is None:
        return 2
    phases = _tree_get(tree, "train", "phases")
    count = len(phases) if isinstance(phases, list) else 0
    for dest in _PHASE_FLAGS:
        if dest in is_given and _PHASE_FLAGS[dest] > count:
            raise ConfigError(f"{_flag(dest)} sets stage {_PHASE_FLAGS[dest]} of train.phases, but {config_path} has "
                              f"{count} phase(s): give a config with the two stages (e.g. `base: preset:camoxpert` "
                              "in it) or leave --config out")
    return count


def _precision(device: str, notes: list[str]) -> str:
    if device.startswith("cuda"):
        notes.append(f"precision fp16 (mixed precision with a GradScaler, like train_ultimate.py's AMP): --device "
                     f"{device}; train.precision=fp32 or bf16 overrides it")
        return "fp16"
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            notes.append("precision fp16 (mixed precision with a GradScaler, like train_ultimate.py's AMP): a CUDA "
                         "device is available; train.precision=fp32 or bf16 overrides it")
            return "fp16"
        notes.append("precision fp32: train_ultimate.py trained with AMP fp16, which needs CUDA, and no CUDA device "
                     "is available")
        return "fp32"
    notes.append(f"precision fp32: train_ultimate.py trained with AMP fp16, which needs CUDA; --device {device}")
    return "fp32"


def _defaults_note(v: dict[str, Any], is_given: set[str], given: list[str], notes: list[str]) -> None:
    left = [f"{_flag(d)} {_show(v[d])}" for d in (*ORIGINAL_DEFAULTS, "stage2_batch_size", "stage2_lr")
            if d not in is_given and d not in SWITCHES]
    off = [_flag(d) for d in SWITCHES if d not in is_given]
    text = (f"camoXpert flags ({', '.join(given[:3])}{', ...' if len(given) > 3 else ''}): preset:camoxpert with "
            "train_ultimate.py's defaults for the flags not given")
    if left:
        text += ": " + ", ".join(left)
    if off:
        text += f"; off: {', '.join(off)}"
    notes.append(text + " (give --config FILE to start from a file instead)")


def _skip_notes(v: dict[str, Any], tree: dict[str, Any] | None, explicit: list[str], notes: list[str],
                defaults: bool) -> None:
    init = v["resume_from"]
    if init is None:
        init = _explicit_value(explicit, "model.init_from")
        init = None if init is _NO_VALUE else init
    if init is None and not defaults:
        file_init = _tree_get(tree, "model", "init_from")
        init = None if file_init is _NO_VALUE else file_init
    if not init:
        notes.append("warning: --skip-stage1 without --resume-from: stage 2 starts from the initial weights, not "
                     "from a stage-1 model")
        return
    if isinstance(v["epochs"], int) and isinstance(v["stage1_epochs"], int):
        where = f"stage 2 runs epochs {v['stage1_epochs'] + 1}-{v['epochs']}"
    else:
        where = "stage 2 runs all its epochs"
    notes.append(f"--skip-stage1: training starts at stage 2 from the --resume-from weights; {where} (train_ultimate.py "
                 "continued at the checkpoint's saved epoch + 1 instead; lower --epochs for a shorter stage 2)")


def _schedule_types(v: dict[str, Any], tree: dict[str, Any] | None) -> set[str]:
    if v["scheduler"] is not None:
        return {_SCHEDULE_TYPE[v["scheduler"]]}
    if tree is None:
        return set()  # --resume RUN: the run's own schedule, not read here
    types = set()
    phases = _tree_get(tree, "train", "phases")
    default = _tree_get(tree, "train", "schedule", "type")
    default = "constant" if default is _NO_VALUE else default
    for phase in phases if isinstance(phases, list) else []:
        kind = _tree_get(phase, "schedule", "type") if isinstance(phase, dict) else _NO_VALUE
        types.add(default if kind is _NO_VALUE else kind)
    return types or {default}


def _value_notes(v: dict[str, Any], is_given: set[str], tree: dict[str, Any] | None, explicit: list[str],
                 defaults: bool, notes: list[str]) -> None:
    types = _schedule_types(v, tree)
    if "min_lr" in is_given and types and types <= {"onecycle", "constant"}:
        how = ("onecycle ends at lr / (div_factor x final_div_factor)" if types == {"onecycle"} else
               "the lr is constant")
        notes.append(f"warning: --min-lr {_show(v['min_lr'])} has no effect with the {'/'.join(sorted(types))} schedule "
                     f"({how}); it is the floor of cosine and cosine_restart")
    if "t_mult" in is_given and types and "cosine_restart" not in types:
        notes.append(f"warning: --t-mult {_show(v['t_mult'])} has no effect: it shapes cosine_restart only (the schedule is "
                     f"{'/'.join(sorted(types))})")
    if "warmup_epochs" in is_given and v["warmup_epochs"]:
        notes.append(f"--warmup-epochs {_show(v['warmup_epochs'])}: a linear ramp over stage 2's first "
                     f"{_show(v['warmup_epochs'])} epochs (stage 2 only, as train_ultimate.py did) that scales every "
                     "parameter group alike, so the backbone keeps its 0.1x (train_ultimate.py's warmup set every "
                     "group to the same lr)")
    if "ema_decay" in is_given and not v["use_ema"] and (defaults or tree is not None):
        on = _explicit_value(explicit, "train.ema.enabled")
        if on is _NO_VALUE and not defaults:
            on = _tree_get(tree, "train", "ema", "enabled")
        if on is not True:
            notes.append(f"warning: --ema-decay {_show(v['ema_decay'])} without --use-ema: EMA is off, the decay is unused")


def _check_conflicts(plan: _Plan, explicit: list[str]) -> None:
    """A given flag and an explicit override that set one key (or one inside the other) is an error."""
    from crossattentiondet.cli.common import check_flag_conflicts
    from crossattentiondet.config import parse_override

    claimed = []
    for flag_text, text, conflicts in plan.items:
        if conflicts:
            path, value = parse_override(text)
            claimed.append((flag_text, ".".join(path), value))
    check_flag_conflicts(claimed, explicit)


# ------------------------------------------------------------------------------------------- summary
def phase_summary_lines(config: ExperimentConfig) -> list[str]:
    """One ``# phase N name: ...`` comment line per resolved training phase (``cadet config`` prints them)."""
    from crossattentiondet.engine.phases import resolve_phases

    train = config.train
    phases = resolve_phases(train)
    lines = []
    for phase in phases:
        s = phase.schedule
        schedule = s.type
        if s.type in ("cosine", "cosine_restart"):
            schedule += f" to min_lr {s.min_lr:g}"
        if s.type == "cosine_restart":
            schedule += f" (first cycle {s.restart_epochs:g} epochs, x{s.t_mult:g})"
        if s.warmup_epochs:
            schedule += f", warmup {s.warmup_epochs:g} epochs"
        elif s.warmup_iters:
            schedule += f", warmup {s.warmup_iters} updates"
        if phase.freeze == "staged":
            f = train.freeze
            freeze = f"encoder for {f.epochs} epochs ({f.mode})" if f.epochs else "none"
        elif phase.freeze == "progressive":
            freeze = f"progressive ({phase.unfreeze_steps} steps, last stage first)"
        else:
            freeze = phase.freeze
        skipped = f" (skipped: train.start_phase={train.start_phase})" if phase.index < train.start_phase - 1 else ""
        lines.append(f"# phase {phase.index + 1} {phase.name}: epochs {phase.start_epoch + 1}-{phase.end_epoch}, batch "
                     f"{phase.batch_size} x accumulation {phase.accumulation} = {phase.effective_batch()}, lr "
                     f"{phase.lr:g}, backbone lr {phase.lr * phase.backbone_lr_mult:g}, schedule {schedule}, "
                     f"freeze {freeze}{skipped}")
    return lines
