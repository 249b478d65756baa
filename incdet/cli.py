"""The ``incdet`` command line: ``incdet <command> ...``.

Each sub-package contributes its commands through a ``register(subparsers)`` function
that adds parsers and sets ``func`` (called with the parsed args, returns an exit code).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Callable, Iterable, Optional, Sequence

from incdet.errors import IncdetError


def run_cli(prog: str, description: str, registrars: Iterable[Callable], argv: Optional[Sequence[str]] = None) -> int:
    """Build a parser from ``registrars``, run the chosen command, turn user errors into exit 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in registrars:
        register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        rc = args.func(args)
    except IncdetError as e:  # one line, whatever the message (e.g. torch's load_state_dict errors)
        msg = re.sub(r"\s*\n\s*", " ", str(e).strip())
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def _registrars():
    from incdet import demo
    from incdet.data import cli as data_cli
    from incdet.engine import cli as engine_cli
    from incdet.eval import cli as eval_cli
    from incdet.models import cli as models_cli

    return [
        demo.register,
        data_cli.register,
        eval_cli.register,
        models_cli.register,
        lambda sub: engine_cli.register(sub, family="incdet"),
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli("incdet", "Class-incremental object detection and the shared task-incremental driver.", _registrars(), argv)


if __name__ == "__main__":
    sys.exit(main())
