"""The ``cadet`` command line. Thin: parse arguments, call the library, print.

Each command group lives in its own module with a ``register(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from crossattentiondet.errors import USER_ERRORS

COMMAND_MODULES = [
    "crossattentiondet.cli.model_cmd",
    "crossattentiondet.cli.data_cmd",
    "crossattentiondet.cli.train_cmd",
    "crossattentiondet.cli.study_cmd",
    "crossattentiondet.cli.bench_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cadet",
        description="CrossAttentionDet: multi-modal (RGB + thermal + event) object detection research toolkit.",
    )
    from crossattentiondet import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
    except USER_ERRORS as err:
        message = str(err) if not isinstance(err, FileNotFoundError) or not err.filename else f"file not found: {err.filename}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cadet ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
