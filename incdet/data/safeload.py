"""Reading user files as data, never as code: JSON with bounded nesting, pickles by allow-list.

:func:`load_json` reads a UTF-8 JSON file; any failure (missing file, bad encoding, syntax,
nesting deeper than ``max_depth`` levels, NaN/Infinity literals where refused) is one
:class:`~incdet.errors.DataError` naming the file. Nesting is bounded because Python's JSON
parser and everything that walks the result (``repr`` in an error message, ``copy``) recurse
and would otherwise fail with ``RecursionError``.

:func:`load_pickle` unpickles with :class:`RestrictedUnpickler`, which resolves only the
globals of :data:`ALLOWED_GLOBALS` (numpy arrays, dtypes and scalars under their numpy 1.x
``numpy.core`` and 2.x ``numpy._core`` names, ``_codecs.encode`` for latin-1 text only,
``set``/``frozenset``/``complex``/``OrderedDict``, ``bytes``/``bytearray`` but not their
``bytes(n)`` form) plus the caller's ``extra``
ones. Lists, dicts, tuples, strings, bytes and numbers need no global. Anything else (``os.system``,
``builtins.eval``, any class) is refused *before* it is called: a :class:`DataError` that names
the file and the forbidden ``module.name``. Arrays of dtype ``object`` (or structured/void) are
refused too (an object array's shape is not checked against its data before allocation). The
file is read into memory first (its size is bounded by ``max_bytes``), so no length field in the
pickle can make the reader allocate more than the file holds; memo indices are checked first
(one opcode can otherwise make the C unpickler allocate a table of any size).
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import reprlib
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from incdet.errors import DataError

MAX_JSON_DEPTH = 100
MAX_PICKLE_BYTES = 4 << 30

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def short_repr(v: Any) -> str:
    """A bounded ``repr`` for error messages (long strings, big or deep containers are cut)."""
    return _REPR.repr(v)


def json_depth_exceeds(obj: Any, max_depth: int) -> bool:
    """Whether ``obj`` (parsed JSON) nests lists/dicts deeper than ``max_depth`` (iterative)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (list, dict)):
            if d > max_depth:
                return True
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return False


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def load_json(path: Union[str, os.PathLike], what: str = "JSON", max_depth: int = MAX_JSON_DEPTH,
              allow_nan: bool = True) -> Any:
    """Parse the UTF-8 JSON file ``path``; ``what`` names it in messages (``"COCO annotation"``).

    Raises :class:`DataError` ``"<path>: ..."`` when the file does not exist, cannot be read or
    decoded, is not JSON, nests more than ``max_depth`` arrays/objects, or (``allow_nan=False``)
    holds ``NaN``/``Infinity``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} file does not exist")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {what} file is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(text, parse_constant=None if allow_nan else _no_constant)
    except RecursionError:
        raise DataError(f"{path}: {what} JSON nests too deeply (more than {max_depth} levels)") from None
    except ValueError as e:  # JSONDecodeError and the parse_constant refusal
        raise DataError(f"{path}: cannot parse {what} JSON ({e})") from None
    if json_depth_exceeds(data, max_depth):
        raise DataError(f"{path}: {what} JSON nests too deeply (more than {max_depth} levels)")
    return data


# --------------------------------------------------------------------------- pickles
def _numpy_attr(*names: str) -> Any:
    """The first of ``numpy._core.x`` / ``numpy.core.x`` attribute paths that exists here."""
    import importlib

    for full in names:
        mod, _, attr = full.rpartition(".")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {names} is available")  # pragma: no cover - numpy layout changed


_SAFE_KINDS = frozenset("biufcmMSU")  # bool, ints, floats, complex, datetimes, bytes/str


def _checked_dtype(dt: Any) -> np.dtype:
    if not isinstance(dt, np.dtype) or dt.kind not in _SAFE_KINDS or dt.fields is not None:
        raise pickle.UnpicklingError(f"array dtype {dt!r} is not allowed (numeric, bool or string only)")
    return dt


def _safe_dtype(obj, align=False, copy=False):
    # numpy pickles a dtype as dtype(obj, align, copy) followed by __setstate__
    return _checked_dtype(np.dtype(obj, bool(align), bool(copy)))


def _safe_reconstruct(subtype, shape, dtype_code):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not allowed (numpy.ndarray only)")
    real = _numpy_attr("numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct")
    return real(np.ndarray, shape, dtype_code)


def _safe_frombuffer(buf, dtype, shape, order):
    real = _numpy_attr("numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer")
    return real(buf, _checked_dtype(dtype), shape, order)


def _safe_scalar(dtype, *args):
    real = _numpy_attr("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
    return real(_checked_dtype(dtype), *args)


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: latin-1 text only."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed (latin1 only)")
    return obj.encode("latin1")


def _no_size(cls):
    """``bytes``/``bytearray`` without their ``cls(n)`` form (which would allocate ``n`` bytes)."""

    def make(*args):
        if args and not isinstance(args[0], (bytes, bytearray, str, list)):
            raise pickle.UnpicklingError(f"{cls.__name__}({type(args[0]).__name__}) is not allowed")
        return cls(*args[:1], *(["latin1"] if args and isinstance(args[0], str) else []))

    return make


def _both(module: str, name: str, obj) -> Dict[Tuple[str, str], Any]:
    """``numpy.core.<module>`` (numpy 1.x) and ``numpy._core.<module>`` (2.x) keys for one object."""
    return {(f"numpy.core.{module}", name): obj, (f"numpy._core.{module}", name): obj}


ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    **_both("multiarray", "_reconstruct", _safe_reconstruct),
    **_both("multiarray", "scalar", _safe_scalar),
    **_both("numeric", "_frombuffer", _safe_frombuffer),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytes"): _no_size(bytes),
    ("builtins", "bytearray"): _no_size(bytearray),
    ("collections", "OrderedDict"): collections.OrderedDict,
}
"""``(module, name) -> object`` that :class:`RestrictedUnpickler` may resolve."""


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose ``find_class`` resolves only an allow-list of globals.

    ``extra`` adds ``(module, name) -> object`` entries; a ``callable`` value given for
    ``(module, "*")`` answers every name of that module prefix (e.g. ``("detectron2", "*")``
    mapping ``BoxMode`` to a stub) and may return ``None`` to refuse.
    """

    def __init__(self, file, extra: Optional[Mapping[Tuple[str, str], Any]] = None):
        super().__init__(file)
        self.allowed = dict(ALLOWED_GLOBALS)
        if extra:
            self.allowed.update(extra)

    def find_class(self, module: str, name: str):
        # protocol 0-2 pickles name Python 2's __builtin__ (pickle maps it with fix_imports)
        if module == "__builtin__":
            module = "builtins"
        obj = self.allowed.get((module, name))
        if obj is not None:
            return obj
        for (m, n), f in self.allowed.items():
            if n == "*" and (module == m or module.startswith(m + ".")):
                obj = f(module, name)
                if obj is not None:
                    return obj
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _check_memo_indices(raw: bytes, path: str, what: str) -> None:
    """Refuse memo indices beyond the opcodes seen so far: ``LONG_BINPUT 2**30`` in a 12-byte
    file makes the C unpickler allocate and zero an 8 GiB memo table before anything else."""
    import pickletools

    n = 0
    try:
        for op, arg, _ in pickletools.genops(raw):
            n += 1
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and (not isinstance(arg, int) or not 0 <= arg <= n):
                raise DataError(f"{path}: cannot read {what} (memo index {short_repr(arg)} after {n} opcodes: "
                                "not written by pickle)")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - genops raises ValueError and others for malformed input
        raise DataError(f"{path}: cannot read {what} ({type(e).__name__}: {short_repr(str(e))})") from None


def load_pickle(path: Union[str, os.PathLike], what: str = "pickle",
                extra: Optional[Mapping[Tuple[str, str], Any]] = None, max_bytes: int = MAX_PICKLE_BYTES) -> Any:
    """Unpickle ``path`` through :class:`RestrictedUnpickler` (see the module docstring).

    Raises :class:`DataError` naming the file: missing, larger than ``max_bytes``, a forbidden
    global (``"... refused: forbidden global posix.system ..."``), or any malformed pickle.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise DataError(f"{path}: {what} file is {size} bytes, more than the {max_bytes} allowed")
        with open(path, "rb") as f:
            raw = f.read()  # the size was checked above (read(n) would reserve n bytes)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path}: {what} file is a directory") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} file ({e.strerror or e})") from None
    _check_memo_indices(raw, path, what)
    try:
        return RestrictedUnpickler(io.BytesIO(raw), extra).load()
    except pickle.UnpicklingError as e:
        msg = str(e)
        if msg.startswith("forbidden global"):
            raise DataError(f"{path}: {what} refused: {msg} (only numpy arrays, lists, dicts, tuples and "
                            "numbers may be unpickled)") from None
        raise DataError(f"{path}: cannot read {what} ({short_repr(msg)})") from None
    except RecursionError:
        raise DataError(f"{path}: cannot read {what} (nested too deeply)") from None
    except MemoryError:
        raise DataError(f"{path}: cannot read {what} (it asks for more memory than is available)") from None
    except Exception as e:  # noqa: BLE001 - a malformed pickle raises assorted types (EOFError, ValueError, ...)
        raise DataError(f"{path}: cannot read {what} ({type(e).__name__}: {short_repr(str(e))})") from None

__all__ = ["ALLOWED_GLOBALS", "MAX_JSON_DEPTH", "RestrictedUnpickler", "json_depth_exceeds", "load_json",
           "load_pickle", "short_repr"]
