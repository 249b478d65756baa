"""Deprecated module: learners and task builders are found through entry points
(:mod:`incdet.engine.plugins`). ``import_family(prefix)`` is kept for callers that still import
it; it imports the modules of the entry points named ``prefix`` or ``prefix.*``, which loading a
config does by itself when needed."""
from incdet.engine.plugins import load_prefix as import_family  # noqa: F401
