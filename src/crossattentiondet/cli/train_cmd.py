"""``cadet train``, ``cadet eval``, ``cadet predict`` and ``cadet demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from crossattentiondet.cli.camoxpert import add_camoxpert_flags, camoxpert_overrides, generic_overrides
from crossattentiondet.cli.common import NO_VALUE, add_config_args, check_flag_conflicts, print_json
from crossattentiondet.config import ConfigError, load_config

if TYPE_CHECKING:
    from rich.table import Table

# the original scripts' flags (seeds/000, seeds/002), accepted so their commands work with `cadet train`
SEED_FLAGS = ("--data", "--labels", "--epochs", "--batch-size", "--lr", "--backbone", "--cssa-stages", "--cssa-thresh",
              "--cssa-kernel", "--gaff-stages", "--gaff-se-reduction", "--gaff-inter-shared",
              "--gaff-merge-bottleneck", "--output-dir", "--model")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a detector (one run directory, resumable)",
        description="Train a detector. With no data configured it trains on the built-in synthetic data set. "
                    "Configure with --config and key=value overrides; the original scripts' flags "
                    "(--data, --epochs, --cssa-stages, ...) are accepted too, and so are camoXpert's "
                    "train_ultimate.py flags (--dataset-path, --stage2-lr, ...: seeds/004, a two-stage "
                    "camouflaged-object segmentation run from preset:camoxpert).")
    add_config_args(p)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                   help="continue from last.pt of this run (or of the run directory / checkpoint PATH)")
    add_seed_flags(p)
    add_camoxpert_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained checkpoint (COCO or segmentation metrics, robustness, plots)",
                       description="Evaluate a run's best.pt (or any checkpoint) on a split of its data, or on "
                                   "another data set with --data. With --pred DETECTIONS.json --gt COCO_GT.json (no "
                                   "checkpoint): score any detector's COCO-format results with the same COCO "
                                   "evaluation as runs (--size-bins aitod for tiny objects). With --pred MAPS_DIR "
                                   "--gt GT_DIR: score any method's saved segmentation maps against ground-truth "
                                   "masks with the same metrics as segmentation runs.")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT", nargs="?")
    p.add_argument("--pred", metavar="DETECTIONS.json|MAPS_DIR",
                   help="a COCO results file (list of {image_id, category_id, bbox, score}) to score against the "
                        "COCO ground truth --gt, or a folder of saved maps (matched to --gt by file stem)")
    p.add_argument("--gt", metavar="COCO_GT.json|GT_DIR",
                   help="COCO ground truth for a detections file, or ground-truth masks for maps (sub-folders: one "
                        "test set each)")
    p.add_argument("--size-bins", choices=["coco", "aitod", "both"], default=None,
                   help="object-size bins of the box metrics: coco (small/medium/large), aitod (very tiny < 8 px, "
                        "tiny 8-16, small 16-32, medium >= 32 by sqrt(area), up to 1500 detections per image) or "
                        "both; for a run: eval.size_bins")
    add_tile_flags(p)
    p.add_argument("--classes", type=_positive_int, default=None,
                   help="with --pred: number of classes incl. background (2: binary COD metrics; more: mIoU)")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default=None,
                   help="split to evaluate (default: test; with --data: all frames)")
    p.add_argument("--data", help="evaluate on this data set instead of the run's own")
    p.add_argument("--out", help="output folder (default: <run>/eval_<split>)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.device=cpu eval.batch_size=8")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="detect objects in new frames with a trained checkpoint",
                       description="Run a checkpoint on .npy frames, folders of them, or data roots of any layout "
                                   "(labels not needed); writes detections.json and one panels.png.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--score-thresh", type=float, default=0.3)
    p.add_argument("--panels", type=int, default=16, help="frames shown in panels.png (0: none)")
    add_tile_flags(p)
    p.set_defaults(func=cmd_predict)
    register_demo(sub)


def add_tile_flags(parser: argparse.ArgumentParser) -> None:
    """``--tile N --overlap F``: sliced inference for large frames with tiny objects (eval.tile, eval.tile_overlap)."""
    parser.add_argument("--tile", type=_positive_int, default=None, metavar="PX",
                        help="sliced inference: run the model on PX x PX tiles of each frame and merge their "
                             "detections with class-wise NMS (eval.tile; default: whole frames)")
    parser.add_argument("--overlap", type=float, default=None, metavar="FRACTION",
                        help="how much neighbouring tiles overlap, 0 <= FRACTION < 1, for the tile in effect "
                             "(--tile, or the run's eval.tile) (eval.tile_overlap; default 0.2)")


def eval_flag_overrides(args: argparse.Namespace, explicit: list[str]) -> list[str]:
    """The overrides of ``--size-bins``, ``--tile`` and ``--overlap`` (those a command has), checked against
    the ``explicit`` key=value overrides: a flag and an override of the same key is an error."""
    produced: list[tuple[str, str, object]] = []
    size_bins = getattr(args, "size_bins", None)
    if size_bins is not None:
        produced.append((f"--size-bins {size_bins}", "eval.size_bins", size_bins))
    tile, overlap = getattr(args, "tile", None), getattr(args, "overlap", None)
    if overlap is not None:
        # without --tile it applies to the run's own eval.tile (its config or the overrides); the run's config
        # is not loaded here, so the note is conditional
        if tile is None and not any(_key_value(text)[0] == "eval.tile" for text in explicit):
            print(f"note: --overlap {overlap} applies to the run's eval.tile; it changes nothing when the run "
                  "sets no tile (give --tile PX for tiled inference)", file=sys.stderr)
        if not 0 <= overlap < 1:
            raise ConfigError(f"--overlap {overlap}: must be at least 0 and below 1 (a fraction of the tile)")
        produced.append((f"--overlap {overlap}", "eval.tile_overlap", overlap))
    if tile is not None:
        produced.append((f"--tile {tile}", "eval.tile", tile))
    check_flag_conflicts(produced, explicit)
    return [f"{key}={value}" for _, key, value in produced]


def add_seed_flags(parser: argparse.ArgumentParser) -> None:
    """The original CrossAttentionDet scripts' flags (seeds/000, seeds/002) as an argument group."""
    seed = parser.add_argument_group(
        "original-script flags (aliases for config keys)",
        "--epochs, --batch-size, --lr and --backbone take camoXpert's meaning when a camoXpert flag is given "
        "(see below)")
    seed.add_argument("--data", help="data root, or the images folder when --labels is given (data.root)")
    seed.add_argument("--labels", help="YOLO labels folder (data.labels)")
    seed.add_argument("--epochs", type=int, help="train.epochs (camoXpert: both stages' epochs; default 120)")
    seed.add_argument("--batch-size", type=int, help="train.batch_size (camoXpert: stage-1 batch; default 2)")
    seed.add_argument("--lr", type=float, help="train.lr (camoXpert: stage-1 lr; default 2.5e-4)")
    seed.add_argument("--backbone", help="model.backbone (mit_b0..mit_b5; camoXpert: a timm model name, "
                                         "model.backbone=timm:NAME; default edgenext_base)")
    seed.add_argument("--model", choices=["baseline", "frm_ffm", "cssa", "gaff", "add", "concat", "early_fusion"],
                      help="fusion type (baseline = FRM+FFM at every stage)")
    seed.add_argument("--cssa-stages", help="CSSA stages, e.g. \"3\" or \"2,3\"")
    seed.add_argument("--cssa-thresh", type=float, help="CSSA switching threshold")
    seed.add_argument("--cssa-kernel", type=int, help="CSSA ECA kernel size")
    seed.add_argument("--gaff-stages", help="GAFF stages, e.g. \"3\" or \"2,3,4\"")
    seed.add_argument("--gaff-se-reduction", type=int, help="GAFF SE reduction")
    seed.add_argument("--gaff-inter-shared", help="GAFF shared inter-modality gate (true/false)")
    seed.add_argument("--gaff-merge-bottleneck", help="GAFF bottleneck merge (true/false)")
    seed.add_argument("--output-dir", help="run directory (output.root = its parent, name = its name)")


def flag_config(args: argparse.Namespace, notes: list[str]) -> tuple[str | None, list[str]]:
    """(config to load, every override) from the command's flags and its key=value overrides.

    camoXpert's flags (:mod:`crossattentiondet.cli.camoxpert`) when any camoXpert-only flag is given: the base
    is --config or preset:camoxpert; else the CrossAttentionDet scripts' flags on --config (or the defaults).
    The flags' overrides come first, the explicit key=value ones after them.
    """
    explicit = list(args.overrides or [])
    base, overrides = camoxpert_overrides(args, notes, explicit)
    if base is None:  # no camoXpert flag: the CrossAttentionDet scripts' flags, as always
        base = args.config
        overrides = seed_flag_overrides(args, notes, explicit)
        generic = generic_overrides(args)  # --seed, --device, ...: their plain keys
        check_flag_conflicts([(flag, *_key_value(text)) for flag, text in generic], explicit)
        overrides += [text for _, text in generic]
    return base, overrides + explicit


def _key_value(override: str) -> tuple[str, object]:
    from crossattentiondet.config import parse_override

    path, value = parse_override(override)
    return ".".join(path), value


def seed_flag_overrides(args: argparse.Namespace, note: list[str], explicit: list[str] | None = None) -> list[str]:
    """Translate the original scripts' flags into dotted overrides (applied before explicit key=value ones).

    A flag and an ``explicit`` override of a key it sets, ``--model`` with the CSSA/GAFF flags of another
    fusion type, or CSSA with GAFF flags are errors: one of the two would be silently ignored.
    """
    _check_fusion_flags(args)
    # (flag, override, whether an explicit override of the key conflicts): the defaults that --cssa-*/--gaff-*
    # bring along (other, flow, drop-path) are meant to be overridable
    out: list[tuple[str, str, bool]] = []
    if args.data:
        data = Path(args.data)
        if args.labels or (data.is_dir() and any(data.glob("*.npy"))):
            # the ablation scripts pass the images folder itself: DATA/images + DATA/labels
            out += [("--data", f"data.root={data.parent}", True), ("--data", f"data.images_dir={data}", True),
                    ("--data", "data.layout=original", True)]
        else:
            out.append(("--data", f"data.root={data}", True))
    if args.labels:
        out.append(("--labels", f"data.labels={args.labels}", True))
    for flag, key in (("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("lr", "train.lr"),
                      ("backbone", "model.backbone")):
        value = getattr(args, flag)
        if value is not None:
            out.append((_flag_name(flag), f"{key}={value}", True))
    fusion = None
    if args.model:
        if args.model == "early_fusion":
            out.append(("--model", "model.streams=[[rgb,thermal,event]]", True))
        else:
            fusion = "frm_ffm" if args.model == "baseline" else args.model
    fusion_flag = "--model"
    if any(getattr(args, f) is not None for f in _CSSA_FLAGS):
        fusion = "cssa"
        fusion_flag = next(_flag_name(f) for f in _CSSA_FLAGS if getattr(args, f) is not None)
        if args.cssa_stages is not None:
            out.append(("--cssa-stages", f"model.fusion.stages={_stages(args.cssa_stages, '--cssa-stages')}", True))
        if args.cssa_thresh is not None:
            out.append(("--cssa-thresh", f"model.fusion.cssa.switching_thresh={args.cssa_thresh}", True))
        if args.cssa_kernel is not None:
            out.append(("--cssa-kernel", f"model.fusion.cssa.kernel_size={args.cssa_kernel}", True))
    if any(getattr(args, f) is not None for f in _GAFF_FLAGS):
        fusion = "gaff"
        fusion_flag = next(_flag_name(f) for f in _GAFF_FLAGS if getattr(args, f) is not None)
        if args.gaff_stages is not None:
            out.append(("--gaff-stages", f"model.fusion.stages={_stages(args.gaff_stages, '--gaff-stages')}", True))
        if args.gaff_se_reduction is not None:
            out.append(("--gaff-se-reduction", f"model.fusion.gaff.se_reduction={args.gaff_se_reduction}", True))
        for flag, key in (("gaff_inter_shared", "inter_shared"), ("gaff_merge_bottleneck", "merge_bottleneck")):
            value = getattr(args, flag)
            if value is not None:
                out.append((_flag_name(flag), f"model.fusion.gaff.{key}={_bool(value, _flag_name(flag))}", True))
    if fusion is not None:
        out.append((fusion_flag, f"model.fusion.type={fusion}", True))
        if fusion in ("cssa", "gaff"):
            # the original ablation scripts: FRM+FFM at the other stages, fused map into both streams, no drop-path
            out += [(fusion_flag, text, False)
                    for text in ("model.fusion.other=frm_ffm", "model.fusion.flow=fused", "model.drop_path_rate=0.0")]
            note.append("original ablation-script flags: CSSA/GAFF at the given stages, FRM+FFM elsewhere, fused "
                        "flow and drop-path 0 as in the original; add model.fusion.flow=separate for a comparison "
                        "matched to the baseline")
    if args.output_dir:
        out_dir = Path(args.output_dir)
        out += [("--output-dir", f"output.root={out_dir.parent}", True), ("--output-dir", f"name={out_dir.name}", True)]
    _check_flag_override_conflicts(args, out, explicit or [])
    return [text for _, text, _ in out]


_CSSA_FLAGS = ("cssa_stages", "cssa_thresh", "cssa_kernel")
_GAFF_FLAGS = ("gaff_stages", "gaff_se_reduction", "gaff_inter_shared", "gaff_merge_bottleneck")
# keys a flag decides besides those it sets: `--data X data.labels=Y` reads X as a data root where
# `--data X --labels Y` reads it as the images folder
_ALSO_CONFLICTS = {"--data": ("data.root", "data.images_dir", "data.labels")}


def _flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _flag_text(args: argparse.Namespace, flag: str) -> str:
    value = getattr(args, flag[2:].replace("-", "_"))
    return f"{flag} {value}"


def _check_fusion_flags(args: argparse.Namespace) -> None:
    cssa = [_flag_name(f) for f in _CSSA_FLAGS if getattr(args, f) is not None]
    gaff = [_flag_name(f) for f in _GAFF_FLAGS if getattr(args, f) is not None]
    if cssa and gaff:
        raise ConfigError(f"{cssa[0]} and {gaff[0]}: --cssa-* and --gaff-* flags cannot be combined in one run")
    given = cssa or gaff
    if args.model and given:
        kind = "cssa" if cssa else "gaff"
        if args.model != kind:
            raise ConfigError(f"--model {args.model} conflicts with {given[0]} (a {kind.upper()} flag): give "
                              f"--model {kind} or leave --model out")


def _check_flag_override_conflicts(args: argparse.Namespace, produced: list[tuple[str, str, bool]],
                                   explicit: list[str]) -> None:
    """A flag and a key=value override that set one key (or one inside the other) is an error."""
    from crossattentiondet.config import parse_override

    claimed: list[tuple[str, str, object]] = []  # (flag, key, the value the flag gives it)
    for flag, text, conflicts in produced:
        if conflicts:
            path, value = parse_override(text)
            claimed.append((flag, ".".join(path), value))
    claimed += [(flag, key, NO_VALUE) for flag, keys in _ALSO_CONFLICTS.items()
                if any(f == flag for f, _, _ in claimed) for key in keys
                if not any(f == flag and k == key for f, k, _ in claimed)]  # a key it sets keeps its value
    check_flag_conflicts([(_flag_text(args, flag), key, value) for flag, key, value in claimed], explicit,
                         "give the data as --data/--labels flags or as data.root/data.images_dir/data.labels "
                         "overrides, not both")


def _stages(text: str, flag: str) -> str:
    parts = [p for p in text.replace(" ", "").replace(",", "") if p]
    if not parts or any(p not in "1234" for p in parts):
        raise ConfigError(f"{flag} {text!r}: stages are digits 1-4, e.g. \"3\" or \"2,3\"")
    return "[" + ",".join(parts) + "]"


def _bool(text: str, flag: str) -> str:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return "true"
    if lowered in ("false", "0", "no"):
        return "false"
    raise ConfigError(f"{flag} {text!r}: expected true or false")


def cmd_train(args: argparse.Namespace) -> int:
    from crossattentiondet.cli import looks_like_override
    from crossattentiondet.engine.trainer import train

    notes: list[str] = []
    resume = args.resume
    if isinstance(resume, str) and looks_like_override(resume) and not Path(resume).exists():
        # `--resume train.epochs=30`: argparse took the override for --resume's optional path
        args.overrides = [resume, *(args.overrides or [])]
        resume = True
    args.resume = resume  # camoXpert's flags: `--resume RUN` makes the run's own config their base
    base, overrides = flag_config(args, notes)
    for note in notes:
        print(note if note.startswith("warning: ") else f"note: {note}")
    if resume is not False and resume is not True and not args.config:
        # `cadet train --resume runs/x [key=value ...]`: the run's own config, changed by the overrides
        result = train(None, resume=resume, overrides=overrides)
    else:
        result = train(load_config(base, overrides), resume=resume)
    if result.finished:
        print(f"run finished: {result.run_dir}")
        if result.test_metrics:
            m = result.test_metrics
            keys = [k for k in ("mAP", "mAP_50", "Smeasure", "wFmeasure", "MAE", "mIoU", "pixel_acc") if k in m]
            print("test " + "  ".join(f"{k} {m[k]:.4f}" for k in keys)
                  + f"  (results: {result.run_dir / 'final_results.json'})")
    else:
        print(f"run stopped after epoch {result.state.epoch}: continue with `cadet train --resume {result.run_dir}`")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from crossattentiondet.engine.inference import evaluate_checkpoint

    if args.pred or args.gt:
        if _is_json_file(args.pred) or (not args.pred and _is_json_file(args.gt)):
            return _eval_detection_files(args)
        if args.size_bins is not None or args.tile is not None or args.overlap is not None:
            raise ConfigError("--size-bins, --tile and --overlap are for boxes: give them with a run, or with "
                              "--pred DETECTIONS.json --gt COCO_GT.json (--size-bins only), not with saved maps")
        return _eval_maps(args)
    if args.checkpoint is None:
        raise ConfigError("cadet eval needs a run directory or checkpoint (or --pred DETECTIONS.json --gt "
                          "COCO_GT.json, or --pred MAPS_DIR --gt GT_DIR)")
    split = args.split or ("all" if args.data else "test")
    explicit = list(args.overrides or [])
    overrides = eval_flag_overrides(args, explicit) + explicit
    summary = evaluate_checkpoint(args.checkpoint, split=split, data_root=args.data, out_dir=args.out,
                                  overrides=overrides, echo=(lambda _m: None) if args.json else print)
    if args.json:
        print_json(summary)
        return 0
    from rich.console import Console

    print(f"{summary['split']} split of {summary['data_root']} ({summary['images']} images), "
          f"checkpoint {summary['checkpoint']}")
    table = metrics_table(summary["metrics"])
    boot = summary.get("bootstrap") or {}
    ci = boot.get("ci95")
    if ci and None not in ci:  # over test images (eval.bootstrap resamples), see bootstrap_<split>.json
        table.add_row(f"{boot.get('metric', 'mAP')} 95% CI", f"{ci[0]:.4f}-{ci[1]:.4f}")
    Console().print(table)
    for note in summary.get("notes") or []:
        print(f"note: {note}")
    print(f"written to {summary['out_dir']}")
    return 0


def _is_json_file(path: str | None) -> bool:
    # a .json name is a detections file even when it does not exist (then the error says so, naming it)
    return path is not None and (Path(path).suffix.lower() == ".json" or Path(path).is_file())


def _eval_detection_files(args: argparse.Namespace) -> int:
    """``cadet eval --pred DETECTIONS.json --gt COCO_GT.json``: any detector's COCO results, scored as runs are."""
    from crossattentiondet.engine.coco_files import evaluate_detection_files

    if not (args.pred and args.gt):
        raise ConfigError("--pred and --gt go together: cadet eval --pred DETECTIONS.json --gt COCO_GT.json")
    if args.checkpoint or args.data or args.split or args.overrides:
        raise ConfigError("--pred/--gt score a saved detections file: give no checkpoint, --data, --split or "
                          "overrides with them")
    if args.tile is not None or args.overlap is not None:
        raise ConfigError("--tile/--overlap change how a model runs: saved detections (--pred) are scored as they are")
    if args.classes is not None:
        raise ConfigError(f"--classes {args.classes}: for saved segmentation maps (--pred MAPS_DIR); a detections "
                          "file's classes are its ground truth's categories")
    out = None
    if args.out:
        from crossattentiondet.io import ensure_writable_dir

        out = ensure_writable_dir(args.out, "--out")  # before the work: a read-only folder is said now
    result = evaluate_detection_files(Path(args.pred), Path(args.gt), args.size_bins or "coco")
    if out is not None:
        from crossattentiondet.io import atomic_write_json

        atomic_write_json(Path(out) / "metrics.json", result)
        result["out_dir"] = str(out)
    if args.json:
        print_json(result)
        return 0
    from rich.console import Console
    from rich.table import Table

    dets = ", ".join(f"{name} {n}" for name, n in result["max_dets"].items())
    print(f"{args.pred} vs {args.gt}: {result['num_images']} images, {result['num_ground_truth']} ground-truth "
          f"boxes, {result['num_predictions']} detections; size bins {result['size_bins']} (detections per image: "
          f"{dets})")
    table = metrics_table(result["metrics"])
    Console().print(table)
    if len(result["per_class"]) > 1:
        table = Table()
        for key in ("class", "AP", "AP_50", "AP_75", "ground truth"):
            table.add_column(key)
        for name, ap in result["per_class"].items():
            table.add_row(name, *("n/a" if ap[k] != ap[k] else f"{ap[k]:.4f}" for k in ("AP", "AP_50", "AP_75")),
                          str(ap["num_gt"]))
        Console().print(table)
    for note in result["notes"]:
        print(f"note: {note}")
    if out is not None:
        print(f"written to {Path(out) / 'metrics.json'}")
    return 0


def _eval_maps(args: argparse.Namespace) -> int:
    """``cadet eval --pred MAPS --gt GT``: saved maps of any method, scored like a segmentation run."""
    from crossattentiondet.segmentation.maps import evaluate_map_folders

    if not (args.pred and args.gt):
        raise ConfigError("--pred and --gt go together: cadet eval --pred MAPS_DIR --gt GT_DIR")
    if args.checkpoint or args.data or args.split or args.overrides:
        raise ConfigError("--pred/--gt score saved maps: give no checkpoint, --data, --split or overrides with them")
    result = evaluate_map_folders(Path(args.pred), Path(args.gt), num_classes=args.classes or 2)
    if args.json:
        print_json(result.to_dict())
        return 0
    from rich.console import Console
    from rich.table import Table

    print(f"{args.pred} vs {args.gt}: {result.images} images")
    columns = {**result.per_set, "all": result.metrics} if result.per_set else {"all": result.metrics}
    table = Table()
    table.add_column("metric")
    for name in columns:
        table.add_column(name)
    for key in result.metrics:
        table.add_row(key, *("n/a" if c.get(key) != c.get(key) else f"{c[key]:.4f}" for c in columns.values()))
    Console().print(table)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from crossattentiondet.engine.inference import predict

    if not 0 <= args.score_thresh <= 1:
        raise ConfigError(f"--score-thresh {args.score_thresh}: must be between 0 and 1")
    if args.panels < 0:
        raise ConfigError(f"--panels {args.panels}: must be >= 0")
    predict(args.checkpoint, args.inputs, args.out, score_thresh=args.score_thresh, panels=args.panels,
            overrides=eval_flag_overrides(args, []))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthesise data, train the fused model and every single modality, rank them",
                       description="The whole product in a few CPU minutes: synthetic RGB + thermal + event scenes, "
                                   "a fused detector, early fusion and each modality alone trained the same way, "
                                   "evaluated on several hundred test frames with bootstrap intervals, REPORT.md. "
                                   "--task segment does the same for camouflaged-object segmentation on synthetic "
                                   "RGB + thermal scenes (fused, early fusion, RGB only, thermal only).")
    p.add_argument("--task", choices=("detect", "segment"), default="detect",
                   help="detect (default: boxes, ranked by test mAP) or segment (camouflaged objects, ranked by "
                        "test S-measure)")
    p.add_argument("--out", default=None,
                   help="output folder (default ./cadet_demo, or ./cadet_demo_segment with --task segment)")
    p.add_argument("--seeds", type=_positive_int, default=1,
                   help="training seeds per model (default 1; more make the intervals cover seed spread too)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="changes to the demo's settings, e.g. train.epochs=4 (detect: preset:demo; segment: "
                        "crossattentiondet.demo.SEGMENT_DEMO)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from crossattentiondet.demo import run_demo

    run_demo(args.out, overrides=args.overrides, seeds=args.seeds, task=args.task)
    return 0


def metrics_table(metrics: dict[str, float]) -> Table:
    """A rich table of metric -> value (NaN, e.g. a size bin without ground truth, as n/a)."""
    from rich.table import Table

    table = Table()
    for key in ("metric", "value"):
        table.add_column(key)
    for key, value in metrics.items():
        table.add_row(key, "n/a" if value != value else f"{value:.4f}")
    return table
