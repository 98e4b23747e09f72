"""`nanoflow` command line: one module per subcommand, each with `add_parser(subparsers)`.

Subcommand modules import their heavy dependencies (torch, transformers, fastapi) inside their run function,
so that `nanoflow --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# Listed in the order `nanoflow --help` shows them.
COMMANDS = ["generate", "bench", "serve", "search", "explain", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanoflow",
        description="NanoFlow-style nano-batched, SM-partitioned LLM inference as a torch.compile backend.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on a terminal are for users: one line each, without the source line that raised them."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, KeyError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"nanoflow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
