"""The ``slimtune`` command line; each subcommand lives in ``slimtune.commands``.

Bad input prints one line on stderr and exits 2 before any compute; Ctrl-C exits 130
with every MLflow run closed as KILLED.
"""

from __future__ import annotations

import argparse
import sys

from slimtune.errors import UserInputError


def _parser() -> argparse.ArgumentParser:
    from slimtune.commands import command_modules

    p = argparse.ArgumentParser(
        prog="slimtune",
        description="Search per-layer pruning and bit-widths under a latency budget "
                    "measured on the target; every trial in MLflow.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in command_modules():
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        module.add_arguments(cmd)
        cmd.set_defaults(handler=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserInputError as err:
        print(f"slimtune: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("slimtune: interrupted; MLflow runs closed as KILLED", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
