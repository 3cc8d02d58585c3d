"""The `specfleet` command: the entry point people and pipelines call.

Each subcommand parses its arguments and delegates at once; the work lives in the modules it
names.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from specfleet import crdgen


def _crds(args: argparse.Namespace) -> int:
    if args.write:
        for path in crdgen.write(Path(args.write)):
            print(f"wrote {path}")
    else:
        sys.stdout.write(crdgen.render_all())
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="specfleet",
        description="A Kubernetes operator for LLM fleets: speculative decoding, FP8, and "
        "batch limits tuned from live metrics.",
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crds = commands.add_parser(
        "crds",
        help="print the CustomResourceDefinitions",
        description="Print the CRDs generated from specfleet's API models, as multi-document "
        "YAML (pipe it to `kubectl apply -f -`), or write one file per CRD.",
    )
    crds.add_argument("--write", metavar="DIR", help="write one file per CRD into DIR")
    crds.set_defaults(run=_crds)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
