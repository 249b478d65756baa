"""Lazy imports of the packages that register learners and task builders.

Importing a family's package must register its learners in ``incdet.engine.LEARNERS`` and its
task builders in ``incdet.engine.TASK_BUILDERS``. The CLI imports the family it serves; a
learner name with a family prefix (``blitznet``, ``codec.adapters``, ``incdet.fastrcnn``)
also triggers the import of that family's package when it is not registered yet.
"""
from __future__ import annotations

import importlib
import logging
from typing import Dict, List

log = logging.getLogger(__name__)

#: family -> modules whose import registers its learners / task builders
FAMILY_MODULES: Dict[str, List[str]] = {
    "incdet": ["incdet.engine.toy", "incdet.models"],
    "blitznet": ["incdet.engine.toy", "blitznet"],
    "codec": ["incdet.engine.toy", "codec"],
}

#: module -> the ImportError raised when importing it (kept for error messages)
IMPORT_ERRORS: Dict[str, str] = {}


def _try_import(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError as e:
        IMPORT_ERRORS[module] = f"{type(e).__name__}: {e}"
        log.debug("could not import %s: %s", module, e)
        return False


def import_family(family: str) -> None:
    """Import the modules of ``family``; failures are remembered, not raised."""
    for m in FAMILY_MODULES.get(family, []):
        _try_import(m)


def _import_for_name(name: str) -> None:
    import incdet.engine.toy  # noqa: F401  (always available)

    prefix = name.split(".")[0]
    if prefix in FAMILY_MODULES:
        import_family(prefix)


def _failures() -> str:
    if not IMPORT_ERRORS:
        return ""
    return " (modules that failed to import: " + "; ".join(f"{m}: {e}" for m, e in IMPORT_ERRORS.items()) + ")"


def ensure_learner(name: str) -> None:
    from incdet.engine import LEARNERS
    from incdet.errors import ConfigError

    if name not in LEARNERS:
        _import_for_name(name)
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner {name!r}; known: {', '.join(LEARNERS.names()) or '(none)'}{_failures()}")


def ensure_task_builder(name: str) -> None:
    from incdet.engine import TASK_BUILDERS
    from incdet.errors import ConfigError

    if name not in TASK_BUILDERS:
        _import_for_name(name)
        if name == "domains":
            import_family("codec")
    if name not in TASK_BUILDERS:
        raise ConfigError(f"unknown task builder {name!r}; known: {', '.join(TASK_BUILDERS.names()) or '(none)'}{_failures()}")
