"""``cadet explain``: what each fusion module does on one frame."""

from __future__ import annotations

import argparse

from crossattentiondet.cli.common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="draw what each fusion module does on one frame (gates, weights, switches)",
                       description="Run a trained dual-stream model on one frame with its fusion modules recording "
                                   "their internals, and save per encoder stage an image of the frame's modalities "
                                   "with the module's maps and channel weights (FRM+FFM, CSSA, GAFF), plus "
                                   "explain.json (the numbers) and internals.npz (the arrays).")
    p.add_argument("run", metavar="RUN", help="run directory or checkpoint")
    p.add_argument("frame", metavar="FRAME", help="a frame stem of the run's data set (or of --data), or a .npy file")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <run>/explain/<frame>)")
    p.add_argument("--data", metavar="ROOT", help="look the frame up in this data set instead of the run's own")
    p.add_argument("--score-thresh", type=float, default=0.3, help="detections drawn (default 0.3)")
    p.add_argument("--json", action="store_true", help="print explain.json instead of a summary")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.device=cpu")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from crossattentiondet.config import ConfigError
    from crossattentiondet.explain import explain_frame

    if not 0 <= args.score_thresh <= 1:
        raise ConfigError(f"--score-thresh {args.score_thresh}: must be between 0 and 1")
    summary = explain_frame(args.run, args.frame, args.out, data_root=args.data, score_thresh=args.score_thresh,
                            overrides=args.overrides, echo=(lambda _m: None) if args.json else print)
    if args.json:
        print_json(summary)
        return 0
    print(f"frame {summary['frame']} ({summary['source']}), {summary['fusion_plan']}")
    for stage in summary["stages"]:
        print(f"  stage {stage['stage']} {stage['module']}: {_describe(stage)}")
    print(f"written to {summary['out_dir']}")
    return 0


def _describe(stage: dict) -> str:
    """One line of the stage's main numbers."""
    def means(block: dict) -> str:
        return ", ".join(f"{name} {v['mean']:.3f}" for name, v in block.items())

    module = stage["module"]
    if not stage.get("recorded"):
        return stage.get("note", "")
    if module == "frm_ffm":
        return f"channel weights {means(stage['channel_weights'])}; spatial weights {means(stage['spatial_weights'])}"
    if module == "cssa":
        switched = ", ".join(f"{name} {f:.0%}" for name, f in stage["switched_fraction"].items())
        return (f"ECA weights {means(stage['eca_weights'])}; switched (threshold {stage['switching_thresh']:g}) "
                f"{switched}")
    if module == "gaff":
        return f"SE gates {means(stage['se_gates'])}; inter gates {means(stage['inter_gates'])}"
    return ", ".join(stage.get("internals", {}))
