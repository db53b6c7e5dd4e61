"""``cadet model-info`` and ``cadet convert-original``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("model-info", help="parameters per component and FLOPs of a configured detector")
