"""``cadet data check|stats|synth|convert`` (placeholder until the data layer lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("data", help="inspect, check, synthesise and convert data sets")
