"""Inspect solver map files.

    python -m hyca_core.maps info FILE       print a readable summary
    python -m hyca_core.maps validate FILE   exit 0 if usable, else 1 with a one-line reason
"""

from __future__ import annotations

import argparse
import sys

from .solver_map import SolverMapError, load_solver_map, summarize


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.maps", description="Inspect HyCa solver map files.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("info", "print a readable summary of a map"), ("validate", "check a map, exit 1 on any defect")):
        p = sub.add_parser(name, help=text)
        p.add_argument("file")
    args = parser.parse_args(argv)
    try:
        m = load_solver_map(args.file)
    except SolverMapError as exc:
        print(f"invalid solver map: {exc}", file=sys.stderr)
        return 1
    if args.command == "info":
        print(summarize(m, args.file))
    else:
        print(f"ok: {args.file} ({m.family}, {m.granularity}, {len(m.scopes)} scopes, fingerprint {m.fingerprint})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
