"""``cadet model-info`` and ``cadet convert-original``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crossattentiondet.cli.common import add_config_args, config_from_args, parse_size, print_json


def register(sub: argparse._SubParsersAction) -> None:
    from crossattentiondet.cli.camoxpert import add_camoxpert_flags
    from crossattentiondet.cli.train_cmd import add_seed_flags

    p = sub.add_parser("config", help="print the fully resolved config (defaults + file + overrides)",
                       description="Print the resolved experiment config as YAML (or JSON): every key with its "
                                   "value, then (YAML) one comment line per training phase. Presets: --config "
                                   "preset:NAME. Takes `cadet train`'s flags too (the original scripts' and "
                                   "camoXpert's), to show what they would train; notes go to stderr.")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.add_argument("--presets", action="store_true", help="list the presets shipped with the package")
    add_seed_flags(p)
    add_camoxpert_flags(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("model-info", help="parameters per component and FLOPs of a configured detector",
                       description="Build the configured detector (random weights, no data needed) and report "
                                   "parameters per component, size, GFLOPs (2 per multiply-add) and GMACs "
                                   "(multiply-adds: the 'FLOPs' of fvcore/mmdet papers).")
    add_config_args(p)
    p.add_argument("--size", default="640x480", metavar="WxH",
                   help="input size for FLOPs (default 640x480); 'none' to skip FLOPs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("convert-original", help="convert an original CrossAttentionDet checkpoint",
                       description="Convert a full original detector checkpoint (.pth) into this project's "
                                   "checkpoint format.")
    p.add_argument("input", metavar="IN.pth")
    p.add_argument("output", metavar="OUT.pt")
    p.add_argument("--backbone", default="mit_b1", choices=[f"mit_b{i}" for i in range(6)])
    p.set_defaults(func=cmd_convert_original)


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from crossattentiondet.cli.camoxpert import phase_summary_lines
    from crossattentiondet.cli.train_cmd import flag_config
    from crossattentiondet.config import config_to_dict, load_config, preset_names

    if args.presets:
        print("\n".join(f"preset:{name}" for name in preset_names()))
        return 0
    notes: list[str] = []
    base, overrides = flag_config(args, notes)
    config = load_config(base, overrides)
    for note in notes:  # stderr: stdout stays a valid YAML / JSON document
        print(note if note.startswith("warning: ") else f"note: {note}", file=sys.stderr)
    tree = config_to_dict(config)
    if args.json:
        print_json(tree)
    else:
        print(yaml.safe_dump(tree, sort_keys=False), end="")
        print("\n".join(phase_summary_lines(config)))
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from crossattentiondet.engine.modelinfo import model_info
    from crossattentiondet.tasks import detection_only

    config = config_from_args(args)
    detection_only(config.task, "cadet model-info")
    size = None if args.size.lower() == "none" else parse_size(args.size)
    info = model_info(config, size)
    if args.json:
        print_json(info)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{info['backbone']} detector, {info['num_classes']} class(es)", caption=f"fusion: {info['fusion_plan']}")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    for name, count in info["components"].items():
        table.add_row(name, f"{count:,}")
    table.add_row("[bold]total[/bold]", f"[bold]{info['total_params']:,}[/bold]")
    console = Console()
    console.print(table)
    console.print(f"size: {info['size_mb']:.1f} MB (fp32)")
    if "flops" in info:
        f = info["flops"]
        console.print(f"at {f['size'][0]}x{f['size'][1]}, per image: backbone {f['backbone_gflops']:.2f} GFLOPs "
                      f"({f['backbone_gmacs']:.2f} GMACs), whole detector {f['detector_gflops']:.2f} GFLOPs "
                      f"({f['detector_gmacs']:.2f} GMACs)")
        console.print("FLOPs count 2 per multiply-add; GMACs count multiply-adds, what fvcore/mmdet papers call "
                      "FLOPs", highlight=False)
    return 0


def cmd_convert_original(args: argparse.Namespace) -> int:
    import torch

    from crossattentiondet.compat import convert_original_checkpoint
    from crossattentiondet.io import atomic_write

    checkpoint = convert_original_checkpoint(args.input, args.backbone)
    atomic_write(Path(args.output), lambda p: torch.save(checkpoint, p))
    print(f"converted {args.input} ({args.backbone}, {checkpoint['num_classes']} class(es)) -> {args.output}")
    return 0
