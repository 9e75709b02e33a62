"""``python -m kvpio_mapping.server serve|accounts|db ...`` without the main CLI."""

from __future__ import annotations

import argparse
import sys

from .commands import add_commands


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    parser = argparse.ArgumentParser(prog="python -m kvpio_mapping.server")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
