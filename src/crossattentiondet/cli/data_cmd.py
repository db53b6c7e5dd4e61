"""``cadet data check|stats|convert|synth``: thin wrappers over :mod:`crossattentiondet.data`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from crossattentiondet.cli.common import add_config_args, config_from_args, print_json
from crossattentiondet.config import ConfigError, ExperimentConfig, SyntheticConfig
from crossattentiondet.data.layouts import LAYOUTS, PRESETS
from crossattentiondet.data.splits import MIN_SPLIT_GROUPS
from crossattentiondet.segmentation.layouts import SEG_LAYOUTS

LAYOUT_HELP = (f"data layout: auto (default: detect), {', '.join(LAYOUTS)}; segmentation: "
               f"{', '.join(SEG_LAYOUTS)}")
TASK_HELP = ("detect or segment (default: segment for cod10k / sinet / mfnet trees, modality folders with "
             "masks/ and no box labels, or the config's task=segment; else detect)")
TINY_IMAGES = 240  # crossattentiondet.data.synth_tiny.DEFAULT_IMAGES (not imported: keeps `cadet --help` light)
TINY_SIZE = (640, 480)  # crossattentiondet.data.synth_tiny.DEFAULT_SIZE
# layouts only segmentation reads: naming one (or finding one) selects the segmentation check and stats
SEG_ONLY_LAYOUTS = ("cod10k", "sinet", "mfnet")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="inspect, check, synthesise and convert data sets",
                            description="Check, describe, convert and synthesise data sets.")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True

    check = commands.add_parser("check", help="list every problem of a data set (exit status 1 on errors)",
                                description="Read every frame and list every problem at once, then make the "
                                "split training would use (data.split) and warn about splits with fewer than "
                                f"{MIN_SPLIT_GROUPS} independent groups of frames.")
    check.add_argument("data", metavar="DATA", help="data set root")
    check.add_argument("--layout", help=LAYOUT_HELP)
    check.add_argument("--task", choices=("detect", "segment"), help=TASK_HELP)
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_args(check)
    check.set_defaults(func=run_check)

    stats = commands.add_parser("stats", help="images, boxes per class and size, image sizes, channel mean/std")
    stats.add_argument("data", metavar="DATA", help="data set root")
    stats.add_argument("--layout", help=LAYOUT_HELP)
    stats.add_argument("--task", choices=("detect", "segment"), help=TASK_HELP)
    stats.add_argument("--out", metavar="DIR|FILE.json",
                       help="folder for stats.json (and histograms), or the JSON file itself (default: the current "
                       "folder; never inside DATA)")
    stats.add_argument("--histograms", nargs="?", const=True, metavar="DIR",
                       help="also save per-modality histograms as PNG, into DIR (default: the --out folder)")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    add_config_args(stats)
    stats.set_defaults(func=run_stats)

    convert = commands.add_parser("convert", help="convert to the npy layout, paired folders or COCO")
    convert.add_argument("src", metavar="SRC", help="source data set root (any layout)")
    convert.add_argument("dst", metavar="DST", help="destination folder (must not exist or be empty)")
    convert.add_argument("--to", required=True, metavar="npy|folders|coco",
                         help="output layout (coco: modality folders + one annotations.json)")
    convert.add_argument("--layout", help="layout of SRC: " + LAYOUT_HELP.split(": ", 1)[1])
    convert.add_argument("--json", action="store_true", help="print the result as JSON")
    add_config_args(convert)
    convert.set_defaults(func=run_convert)

    defaults = SyntheticConfig()
    synth = commands.add_parser("synth", help="write the synthetic RGB + thermal + event data set (--task "
                                "segment: camouflaged RGB + thermal scenes with masks; --task tiny: a 4-15 px ball "
                                "and players, coco layout)")
    synth.add_argument("out", metavar="OUT", help="output folder")
    synth.add_argument("--images", type=int, default=None,
                       help=f"frames (default {defaults.images}; tiny: {TINY_IMAGES})")
    synth.add_argument("--size", default=None, metavar="WxH",
                       help=f"frame size, width x height (default {defaults.size[0]}x{defaults.size[1]}; tiny: "
                       f"{TINY_SIZE[0]}x{TINY_SIZE[1]})")
    synth.add_argument("--classes", type=int, default=None,
                       help=f"classes, 1..5 (default {defaults.classes}; detect only)")
    synth.add_argument("--format", default=None, metavar="npy|folders",
                       help="output layout (default npy; detect only: segment writes folders, tiny the coco layout)")
    synth.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)")
    synth.add_argument("--event", action="store_true",
                       help="tiny only: also write an event/ modality (moving objects fire events)")
    synth.add_argument("--task", choices=("detect", "segment", "tiny"), default="detect",
                       help="detect: boxes (default); segment: camouflaged objects with masks, folders "
                       "layout (rgb/ thermal/ masks/); tiny: a 4-15 px ball (faint in rgb, hot in thermal) and "
                       "20-60 px players on grass, coco layout (train/ val/ test/ with images/ thermal/ "
                       "annotations/annotations.json)")
    synth.set_defaults(func=run_synth)


def is_segmentation(args: argparse.Namespace, config: ExperimentConfig) -> bool:
    """Whether ``cadet data check|stats`` looks at a segmentation data set: ``--task``, else the config's
    ``task=segment``, a segmentation-only layout (named or found in DATA), or modality folders with a mask
    folder and no box labels (what ``cadet data synth --task segment`` writes)."""
    from crossattentiondet.segmentation.layouts import detect_seg_layout

    if args.task is not None:
        return args.task == "segment"
    if config.task == "segment":
        return True
    layout = args.layout if args.layout not in (None, "auto") else config.data.layout
    if layout != "auto":
        return layout in SEG_ONLY_LAYOUTS
    found = detect_seg_layout(Path(args.data), config.data)
    if found == "folders":  # modality folders + masks/: segmentation unless it also has detection labels
        return config.data.labels is None and not any((Path(args.data) / c).exists()
                                                      for c in PRESETS["folders"].labels)
    return found in SEG_ONLY_LAYOUTS


def run_seg_check(args: argparse.Namespace, config: ExperimentConfig) -> int:
    from crossattentiondet.segmentation.checks import check_seg_source
    from crossattentiondet.segmentation.layouts import open_seg_source

    source = open_seg_source(args.data, config.data, args.layout)
    return _print_check(args, check_seg_source(source, split=config.data.split))


def _print_check(args: argparse.Namespace, report: Any) -> int:
    """A check report (detection's or segmentation's) as JSON or one line per problem; exit 1 on errors."""
    if args.json:
        print_json(report.to_dict())
    else:
        for note in report.notes:
            print(f"note: {note}")
        for problem in report.problems:
            print(f"{problem.severity}: {problem}")
        print(report.summary())
    return 1 if report.errors else 0


def run_check(args: argparse.Namespace) -> int:
    from crossattentiondet.data import check_dataset

    config = config_from_args(args)
    if is_segmentation(args, config):
        return run_seg_check(args, config)
    return _print_check(args, check_dataset(args.data, config.data, layout=args.layout, check_split=True))


def format_stats(stats: dict[str, Any]) -> str:
    """Human-readable lines of :func:`~crossattentiondet.data.compute_stats` output."""
    boxes = stats["boxes"]
    sizes = ", ".join(f"{k} x{v}" for k, v in list(stats["image_sizes"].items())[:5])
    more = " ..." if len(stats["image_sizes"]) > 5 else ""
    lines = [
        f"images {stats['images']} ({stats['negatives']} without boxes, {stats['unreadable']} unreadable), "
        f"layout {stats['layout']}",
        f"image sizes: {sizes}{more}",
        f"boxes {boxes['total']} ({boxes['per_image']} per image): "
        + ", ".join(f"{k} {v}" for k, v in boxes["per_class"].items()),
        "box sizes (COCO): " + ", ".join(f"{k} {v}" for k, v in boxes["sizes"].items()),
        "channel mean / std on the 0-1 scale (for data.modalities[].mean/std):",
    ]
    for name, ch in stats["channels"].items():
        mean = " ".join(f"{v:.4f}" for v in ch["mean"])
        std = " ".join(f"{v:.4f}" for v in ch["std"])
        scale = f"{ch['scale']:g}" if ch["scale"] else "per file"
        lines.append(f"  {name:<10} scale {scale}  mean {mean}  std {std}")
    return "\n".join(lines)


def run_stats(args: argparse.Namespace) -> int:
    from crossattentiondet.data import compute_stats
    from crossattentiondet.data.layouts import check_root
    from crossattentiondet.data.stats import stats_output_paths
    from crossattentiondet.io import atomic_write_json, ensure_writable_dir, ensure_writable_file

    # --histograms takes an optional folder, so `--histograms data.layout=x` would swallow an override
    if isinstance(args.histograms, str) and re.fullmatch(r"[A-Za-z_][\w.\[\]]*=.*", args.histograms) \
            and not Path(args.histograms).exists():
        args.overrides = [args.histograms, *(args.overrides or [])]
        args.histograms = True
    config = config_from_args(args)
    check_root(Path(args.data))  # a missing DATA is said before any output folder is made
    out, hist_dir = stats_output_paths(args.data, args.out, args.histograms)
    # the outputs are checked before every frame is read
    if args.out is not None and Path(args.out).suffix.lower() != ".json":  # --out is a folder
        ensure_writable_dir(args.out, "--out")
    ensure_writable_file(out, "--out" if args.out is not None else "stats file")
    if hist_dir is not None:
        ensure_writable_dir(hist_dir, "--histograms")
    segment = is_segmentation(args, config)
    if segment and hist_dir is not None:
        raise ConfigError("--histograms: not available for segmentation data sets (the statistics give the "
                          "channel mean / std)")
    if segment:
        from crossattentiondet.segmentation.checks import format_seg_stats, seg_stats
        from crossattentiondet.segmentation.layouts import open_seg_source

        stats = seg_stats(open_seg_source(args.data, config.data, args.layout))
    else:
        stats = compute_stats(args.data, config.data, layout=args.layout, histograms_dir=hist_dir)
    atomic_write_json(out, stats)
    if args.json:
        print_json(stats)
    else:
        print(format_seg_stats(stats) if segment else format_stats(stats))
        if stats.get("histograms"):
            print(f"histograms: {', '.join(stats['histograms'])}")
        print(f"saved {out}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from crossattentiondet.data import convert_dataset

    config = config_from_args(args)
    result = convert_dataset(args.src, args.dst, args.to, config.data, layout=args.layout,
                             log=(lambda _: None) if args.json else print)
    if args.json:
        print_json({"dst": str(result.dst), "frames": result.frames, "skipped": result.skipped,
                    "layout": result.layout})
    else:
        print(f"wrote {result.frames} frames to {result.dst} ({result.layout} layout)"
              + (f", skipped {result.skipped} with errors" if result.skipped else ""))
    return 0


def parse_size(text: str) -> tuple[int, int]:
    """``160x128`` -> (160, 128) (width, height); ConfigError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if match is None:
        raise ConfigError(f"--size must look like WIDTHxHEIGHT (e.g. 160x128), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def run_synth(args: argparse.Namespace) -> int:
    from crossattentiondet.data.synth import generate_dataset
    from crossattentiondet.io import ensure_writable_dir

    if args.task == "segment":
        return run_seg_synth(args)
    if args.task == "tiny":
        return run_tiny_synth(args)
    if args.event:
        raise ConfigError("--event is for --task tiny (the detect data set always has an event modality)")
    defaults = SyntheticConfig()
    size = parse_size(args.size) if args.size is not None else tuple(defaults.size)
    images = args.images if args.images is not None else defaults.images
    classes = args.classes if args.classes is not None else defaults.classes
    fmt = args.format or "npy"
    ensure_writable_dir(args.out, "OUT")  # before any frame is rendered
    out = generate_dataset(Path(args.out), images, size, classes, fmt, args.seed)
    print(f"wrote {images} synthetic frames ({size[0]}x{size[1]}, {classes} classes, {fmt}) to {out}")
    return 0


def run_seg_synth(args: argparse.Namespace) -> int:
    """``cadet data synth OUT --task segment``: camouflaged RGB + thermal scenes with masks (folders)."""
    from crossattentiondet.io import ensure_writable_dir
    from crossattentiondet.segmentation.synth import generate_seg_dataset

    defaults = SyntheticConfig()
    if args.classes is not None or args.format is not None:
        raise ConfigError("--classes and --format are for detection data; --task segment writes binary masks "
                          "in the folders layout")
    if args.event:
        raise ConfigError("--event is for --task tiny; --task segment writes rgb + thermal")
    size = parse_size(args.size) if args.size is not None else tuple(defaults.size)
    images = args.images if args.images is not None else defaults.images
    ensure_writable_dir(args.out, "OUT")
    out = generate_seg_dataset(Path(args.out), images, size, args.seed)
    print(f"wrote {images} synthetic segmentation scenes ({size[0]}x{size[1]}, rgb + thermal + masks) "
          f"to {out}")
    return 0


def run_tiny_synth(args: argparse.Namespace) -> int:
    """``cadet data synth OUT --task tiny``: tiny-object scenes (ball + players), rgb + thermal (+ event), in
    the coco layout."""
    from crossattentiondet.data.synth_tiny import generate_tiny_dataset
    from crossattentiondet.io import ensure_writable_dir

    if args.classes is not None:
        raise ConfigError("--classes: --task tiny has its two classes (player, ball)")
    if args.format not in (None, "coco"):
        raise ConfigError(f"--format {args.format}: --task tiny writes the coco layout (train/ val/ test/ with "
                          "images/ + annotations/annotations.json)")
    size = parse_size(args.size) if args.size is not None else TINY_SIZE
    images = args.images if args.images is not None else TINY_IMAGES
    ensure_writable_dir(args.out, "OUT")
    out = generate_tiny_dataset(Path(args.out), images, size, args.seed, event=args.event)
    modalities = "rgb + thermal" + (" + event" if args.event else "")
    print(f"wrote {images} tiny-object frames ({size[0]}x{size[1]}, {modalities}, classes player and ball, coco "
          f"layout) to {out}")
    return 0
