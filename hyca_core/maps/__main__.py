"""Inspect solver map files.

    python -m hyca_core.maps info FILE       print a readable summary
    python -m hyca_core.maps validate FILE   exit 0 if usable, else 1 with a one-line reason
    python -m hyca_core.maps sign FILE       sign a map you trust whose header is unsigned or edited
"""

from __future__ import annotations

import argparse
import sys

from .describe import summarize
from .files import load_solver_map, save_solver_map
from .format import SolverMapError

COMMANDS = {
    "info": "print a readable summary of a map",
    "validate": "check a map, exit 1 on any defect",
    "sign": "write the header checksum of a map you trust: an older map, or one whose text you edited "
            "(the tensors' checksum and every field are still checked)",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyca_core.maps", description="Inspect HyCa solver map files.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text).add_argument("file")
    args = parser.parse_args(argv)
    try:
        m = load_solver_map(args.file, trust_header=args.command == "sign")
        if args.command == "sign":
            save_solver_map(m, args.file)  # atomic: the old file stays whole until the new one is
            load_solver_map(args.file)
    except (SolverMapError, OSError) as exc:
        print(f"invalid solver map: {exc}" if isinstance(exc, SolverMapError) else f"cannot write the map: {exc}",
              file=sys.stderr)
        return 1
    if args.command == "info":
        print(summarize(m, args.file))
    elif args.command == "sign":
        print(f"signed: {args.file} ({m.family}, {m.granularity}); its header is checked on every load from now on")
    else:
        print(f"ok: {args.file} ({m.family}, {m.granularity}, {len(m.scopes)} scopes, fingerprint {m.fingerprint})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
