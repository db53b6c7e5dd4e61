"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from crossattentiondet.config import ExperimentConfig, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config F`` plus positional ``key=value`` overrides."""
    parser.add_argument("--config", "-c", metavar="FILE", help="experiment config (YAML or JSON)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. train.lr=0.01 model.fusion.stages=[1,4]")


def config_from_args(args: argparse.Namespace, extra_overrides: list[str] | None = None) -> ExperimentConfig:
    return load_config(args.config, list(extra_overrides or []) + list(args.overrides or []))


def print_json(data: Any) -> None:
    """Strict JSON on stdout: NaN/inf as null, numpy scalars as numbers, anything else unknown as a string."""
    from crossattentiondet.io import json_safe

    json.dump(json_safe(data), sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480); a clear error otherwise."""
    from crossattentiondet.config import ConfigError

    parts = text.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"size {text!r} must look like WIDTHxHEIGHT, e.g. 640x480") from None
    if width <= 0 or height <= 0:
        raise ConfigError(f"size {text!r} must be positive")
    return width, height


NO_VALUE = object()  # a key a flag decides without setting it (see check_flag_conflicts)


def check_flag_conflicts(claimed: list[tuple[str, str, Any]], explicit: list[str],
                         decided_hint: str = "") -> None:
    """A flag and a key=value override that set one key (or one inside the other) is an error: one of the two
    would be silently ignored. ``claimed``: (flag as typed, dotted key, the value the flag gives it, or
    :data:`NO_VALUE` for a key the flag decides without setting it; ``decided_hint`` says what to do then).
    The same value both ways is no conflict."""
    from crossattentiondet.config import ConfigError, parse_override

    for text in explicit:
        path, value = parse_override(text)
        key = ".".join(path)
        for flag, flag_key, flag_value in claimed:
            if key == flag_key and value == flag_value:
                continue  # `--backbone mit_b0 model.backbone=mit_b0`
            if key == flag_key or flag_key.startswith(key + ".") or key.startswith(flag_key + "."):
                if flag_value is NO_VALUE:
                    raise ConfigError(f"{flag} conflicts with the override {text}: {decided_hint}")
                raise ConfigError(f"{flag} conflicts with the override {text} (both set "
                                  f"{max(key, flag_key, key=len)}); give it one way, the flag or the override")
