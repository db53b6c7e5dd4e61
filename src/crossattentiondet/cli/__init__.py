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
    "crossattentiondet.cli.export_cmd",
    "crossattentiondet.cli.explain_cmd",
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


def looks_like_override(token: str) -> bool:
    """``key=value`` (a dotted config override), not an option (``--x=1``)."""
    return "=" in token and not token.startswith("-") and not token.startswith("=")


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``key=value`` overrides may also follow options.

    argparse binds a ``nargs='*'`` positional once: in ``cadet train --epochs 1 a=1 --lr 2 b=2`` it takes
    ``a=1`` and leaves ``b=2`` unrecognised. Such leftovers are appended, in order, to the command's
    ``overrides``; anything else is still an error.
    """
    args, extras = parser.parse_known_args(argv)
    if extras and hasattr(args, "overrides"):
        args.overrides = list(args.overrides or []) + [token for token in extras if looks_like_override(token)]
        extras = [token for token in extras if not looks_like_override(token)]
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_command_line(parser, argv)
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
    except BrokenPipeError:  # `cadet ... | head`: the reader left; say nothing more (before OSError: it is one)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:  # read-only or full disk, no permission, a file where a folder should be...
        from crossattentiondet.io import describe_os_error

        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
