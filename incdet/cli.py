"""The ``incdet`` command line: ``incdet <command> ...``.

Each sub-package contributes its commands through a ``register(subparsers)`` function
that adds parsers and sets ``func`` (called with the parsed args, returns an exit code).
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from incdet.engine.cli import run_cli  # noqa: F401  (the runner of every family's CLI)


def _registrars():
    from incdet import demo, zoo
    from incdet.data import cli as data_cli
    from incdet.engine import cli as engine_cli
    from incdet.eval import cli as eval_cli
    from incdet.models import cli as models_cli
    from incdet.models import pretrain

    return [
        demo.register,
        data_cli.register,
        eval_cli.register,
        models_cli.register,
        pretrain.register,
        zoo.register,
        engine_cli.register,
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli("incdet", "Class-incremental object detection and the shared task-incremental driver.", _registrars(), argv)


if __name__ == "__main__":
    sys.exit(main())
