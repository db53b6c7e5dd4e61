"""``cadet export``: a trained detector as ONNX or TorchScript."""

from __future__ import annotations

import argparse

from crossattentiondet.cli.common import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained detector as ONNX or TorchScript",
                       description="Export a run's best.pt (or a checkpoint) for deployment: one float32 image "
                                   "(1, C, H, W) of raw sensor values in, boxes / scores / labels out. Writes "
                                   "<run>/export/model.onnx (or model.pt) and model.onnx.json (the input rules).")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"], help="default: onnx")
    p.add_argument("--dynamic", action="store_true", help="any input height and width (default: --size only)")
    p.add_argument("--out", metavar="FILE", help="model file (default: <run>/export/model.onnx or model.pt)")
    p.add_argument("--size", metavar="WxH",
                   help="example image size to trace with, e.g. 640x480 (default: the run's evaluation size, "
                        "else 640x480); without --dynamic the only size the file accepts")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset, 14-20 (default 17)")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the exported file against the PyTorch model")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. model.detector.score_thresh=0.3")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from crossattentiondet.engine.export import export_model

    size = parse_size(args.size) if args.size else None
    export_model(args.checkpoint, args.format, out=args.out, dynamic=args.dynamic, size=size, opset=args.opset,
                 overrides=args.overrides, check=not args.no_check)
    return 0
