"""The model zoo: weight files this project trained itself, checked by sha256 before use.

Layout (in the repository, ``zoo/`` beside the packages; ``INCDET_ZOO`` overrides the folder)::

    zoo/manifest.json     {"format": 1, "entries": {NAME: ENTRY, ...}}
    zoo/<file>            one weight file per entry (torch state dict, weights_only-loadable)

An ``ENTRY`` holds ``file`` (name inside the zoo folder), ``sha256``, ``size`` (bytes), ``command``
(the exact command that produced the file, runnable from the repository root), ``hardware``,
``wall_s`` (seconds of that command), ``metrics`` (a flat dict of what the weights reach),
``continued_from`` (the sha256 of the previous version when the file continues an earlier
training, else null) and ``notes``.

A config refers to a zoo file as ``zoo:NAME`` wherever it takes a weights path
(``learner.model.weights``, ``learner.model.backbone_weights``); :func:`resolve` turns that into
the file's path after checking its size and sha256, and refuses a mismatch (an altered, truncated
or replaced file) with a :class:`~incdet.errors.CheckpointError` naming the file and the command
that regenerates it. Nothing is ever downloaded.

Limits (issue of the model zoo): a file at most :data:`MAX_FILE_BYTES`, the whole zoo at most
:data:`MAX_TOTAL_BYTES`.

CLI: ``incdet zoo list``, ``incdet zoo verify [NAME ...]``, ``incdet zoo add NAME FILE --command
"..." --hardware "..." --wall-s S [--metric k=v ...] [--continued-from SHA] [--notes "..."]``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from incdet.errors import CheckpointError, ConfigError

PREFIX = "zoo:"
MANIFEST = "manifest.json"
FORMAT = 1
MAX_FILE_BYTES = 25 * 2**20
MAX_TOTAL_BYTES = 150 * 2**20
_ENTRY_KEYS = ("file", "sha256", "size", "command", "hardware", "wall_s", "metrics", "continued_from", "notes")


@dataclass
class ZooEntry:
    """One zoo file and how it was made (see the module docstring)."""

    file: str
    sha256: str
    size: int
    command: str
    hardware: str
    wall_s: float
    metrics: Dict[str, float] = field(default_factory=dict)
    continued_from: Optional[str] = None
    notes: str = ""


def zoo_dir() -> Path:
    """The zoo folder: ``$INCDET_ZOO`` if set, else ``zoo/`` next to the ``incdet`` package."""
    env = os.environ.get("INCDET_ZOO")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "zoo"


#: sha256 of files already hashed, by (path, size, mtime): a config validated and then built
#: hashes its zoo file once
_DIGESTS: Dict[tuple, str] = {}


def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry(name: str, raw, where: Path) -> ZooEntry:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: entry {name!r} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_ENTRY_KEYS))
    missing = [k for k in ("file", "sha256", "size", "command", "hardware", "wall_s") if k not in raw]
    if unknown or missing:
        raise CheckpointError(f"{where}: entry {name!r}: missing keys {missing}, unknown keys {unknown} "
                              f"(valid: {', '.join(_ENTRY_KEYS)})")
    e = ZooEntry(**raw)
    if not isinstance(e.file, str) or Path(e.file).name != e.file or e.file in ("", ".", ".."):
        raise CheckpointError(f"{where}: entry {name!r}: 'file' must be a plain file name inside the zoo, got {e.file!r}")
    if not (isinstance(e.sha256, str) and len(e.sha256) == 64 and all(c in "0123456789abcdef" for c in e.sha256)):
        raise CheckpointError(f"{where}: entry {name!r}: 'sha256' must be 64 lowercase hex digits")
    if not isinstance(e.size, int) or isinstance(e.size, bool) or not 0 < e.size <= MAX_FILE_BYTES:
        raise CheckpointError(f"{where}: entry {name!r}: 'size' must be an integer in 1..{MAX_FILE_BYTES}, got {e.size!r}")
    return e


def read_manifest(root: Optional[Path] = None) -> Dict[str, ZooEntry]:
    """The manifest's entries by name (empty when the zoo has no manifest yet)."""
    root = zoo_dir() if root is None else Path(root)
    path = root / MANIFEST
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot read the zoo manifest ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), dict):
        raise CheckpointError(f"{path}: not a zoo manifest of format {FORMAT} "
                              "(expected {\"format\": 1, \"entries\": {...}})")
    return {name: _entry(name, raw, path) for name, raw in doc["entries"].items()}


def _write_manifest(entries: Dict[str, ZooEntry], root: Path) -> None:
    from incdet.engine.checkpoint import write_atomic

    doc = {"format": FORMAT, "entries": {k: asdict(v) for k, v in sorted(entries.items())}}
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / MANIFEST, lambda f: f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n"))


def verify(name: str, root: Optional[Path] = None, entries: Optional[Dict[str, ZooEntry]] = None) -> Path:
    """Check the zoo file ``name`` against the manifest; return its path.

    Raises :class:`CheckpointError` when the name is unknown (listing the known ones), the file
    is missing, or its size or sha256 differ from the manifest's.
    """
    root = zoo_dir() if root is None else Path(root)
    entries = read_manifest(root) if entries is None else entries
    if name not in entries:
        known = ", ".join(sorted(entries)) or "(the zoo is empty)"
        raise CheckpointError(f"{root / MANIFEST}: unknown zoo entry {name!r}; known: {known}")
    e = entries[name]
    path = root / e.file
    if not path.is_file():
        raise CheckpointError(f"{path}: zoo file of {name!r} is missing; it is made by: {e.command}")
    st = path.stat()
    size = st.st_size
    if size != e.size:
        raise CheckpointError(f"{path}: size {size} bytes, the zoo manifest says {e.size}: the file is altered or "
                              f"truncated; it is made by: {e.command}")
    key = (str(path.resolve()), size, st.st_mtime_ns)
    digest = _DIGESTS.get(key) or sha256_file(path)
    _DIGESTS[key] = digest
    if digest != e.sha256:
        raise CheckpointError(f"{path}: sha256 {digest[:16]}... does not match the zoo manifest's "
                              f"{e.sha256[:16]}...: the file is altered; it is made by: {e.command}")
    return path


def is_zoo_ref(spec: Optional[str]) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def resolve(spec: str) -> str:
    """``zoo:NAME`` -> the verified path of that zoo file; any other string is returned unchanged."""
    if not is_zoo_ref(spec):
        return spec
    name = spec[len(PREFIX):]
    if not name:
        raise ConfigError(f"{spec!r}: a zoo reference is 'zoo:NAME'")
    return str(verify(name))


def add(name: str, file: Union[str, Path], command: str, hardware: str, wall_s: float,
        metrics: Optional[Dict[str, float]] = None, continued_from: Optional[str] = None, notes: str = "",
        root: Optional[Path] = None) -> ZooEntry:
    """Record ``file`` (already inside the zoo folder) under ``name``; replaces an older entry.

    Refuses a file over :data:`MAX_FILE_BYTES` or a zoo that would exceed :data:`MAX_TOTAL_BYTES`.
    """
    root = zoo_dir() if root is None else Path(root)
    path = Path(file)
    if path.resolve().parent != root.resolve():
        raise ConfigError(f"{path}: copy the file into the zoo folder {root} first")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    if not name or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789_-.+" for c in name):
        raise ConfigError(f"zoo entry name {name!r}: use lowercase letters, digits and _-.+")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {size} bytes, over the zoo's limit of {MAX_FILE_BYTES} per file")
    entries = read_manifest(root)
    total = size + sum(e.size for k, e in entries.items() if k != name)
    if total > MAX_TOTAL_BYTES:
        raise ConfigError(f"{path}: the zoo would hold {total} bytes, over its limit of {MAX_TOTAL_BYTES}")
    entry = ZooEntry(file=path.name, sha256=sha256_file(path), size=size, command=command, hardware=hardware,
                     wall_s=float(wall_s), metrics=dict(metrics or {}), continued_from=continued_from, notes=notes)
    entries[name] = entry
    _write_manifest(entries, root)
    return entry


# ------------------------------------------------------------------------------------------- CLI
def _parse_metrics(items: Sequence[str]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for it in items:
        k, sep, v = it.partition("=")
        try:
            if not sep or not k:
                raise ValueError
            out[k] = float(v)
        except ValueError:
            raise ConfigError(f"--metric {it!r}: expected NAME=NUMBER") from None
    return out


def _cmd(args) -> int:
    if args.zoo_command == "list":
        entries = read_manifest()
        if not entries:
            print(f"{zoo_dir()}: no zoo entries")
        for name, e in entries.items():
            m = ", ".join(f"{k}={v:g}" for k, v in e.metrics.items())
            print(f"{name}  {e.file}  {e.size / 2**20:.1f} MiB  {e.hardware}  {e.wall_s:.0f} s  {m}")
        return 0
    if args.zoo_command == "verify":
        entries = read_manifest()
        names: List[str] = list(args.names) or sorted(entries)
        for name in names:
            print(f"{name}: ok ({verify(name, entries=entries)})")
        return 0
    e = add(args.name, args.file, args.command_line, args.hardware, args.wall_s, _parse_metrics(args.metric),
            args.continued_from, args.notes)
    print(f"{args.name}: {e.file} sha256 {e.sha256} ({e.size} bytes) recorded in {zoo_dir() / MANIFEST}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("zoo", help="list, verify or record the project's trained weight files (zoo/)")
    zs = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    zs.required = True
    zs.add_parser("list", help="the manifest's entries")
    v = zs.add_parser("verify", help="check size and sha256 of zoo files against the manifest")
    v.add_argument("names", nargs="*", help="entries to check (default: all)")
    a = zs.add_parser("add", help="record a file already copied into zoo/ (replaces an entry of the same name)")
    a.add_argument("name")
    a.add_argument("file")
    a.add_argument("--command", dest="command_line", required=True, help="the exact command that produced the file")
    a.add_argument("--hardware", required=True)
    a.add_argument("--wall-s", type=float, required=True)
    a.add_argument("--metric", action="append", default=[], help="NAME=VALUE (repeatable)")
    a.add_argument("--continued-from", default=None, help="sha256 of the version this one continues")
    a.add_argument("--notes", default="")
    p.set_defaults(func=_cmd)
