"""Reading and checking COCO-format json (instances files), shared by the data reader, the
evaluator and ``incdet proposals``.

:func:`check_coco_dataset` checks the file-level structure of a COCO dict and raises one
:class:`~incdet.errors.DataError` ``"<file>: <where>: <problem>"`` for the first problem:

* the top level is an object; ``images`` (and, unless ``images_only``, ``annotations`` and
  ``categories``) are lists of objects;
* image ids are ints or strings (not bools, floats, lists...), all of one kind, and unique;
  ``file_name`` is a string when required;
* category ids are ints and unique; ``name`` is a string (required unless
  ``category_names=False``);
* annotation ids are ints or strings and unique (pycocotools silently keeps the last of two
  annotations with one id, which corrupts evaluation: perfect detections scored AP 0.995);
  ``image_id`` / ``category_id`` refer to an existing image / category (no dangling reference);
* ``iscrowd`` is 0 or 1 (or a bool) and ``area`` a finite number >= 0 when present; with
  ``eval_fields=True`` (what pycocotools' COCOeval reads) both must be present.

Box values are left to the callers (the data reader refuses or skips one image for a bad box,
the evaluator refuses the file). :func:`read_coco_json` = :func:`~incdet.data.safeload.load_json`
(bounded nesting, UTF-8) + :func:`check_coco_dataset`.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Sequence, Union

from incdet.data.safeload import load_json, short_repr
from incdet.errors import DataError


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id(v: Any) -> bool:
    return _is_int(v) or isinstance(v, str)


def check_coco_dataset(data: Any, path: Union[str, os.PathLike], *, images_only: bool = False,
                       image_fields: Sequence[str] = ("id",), eval_fields: bool = False,
                       category_names: bool = True) -> Dict[str, int]:
    """Check a parsed COCO dict (see the module docstring); returns ``{"images", "annotations",
    "categories"}`` counts. ``path`` only names the source in messages."""
    path = os.fspath(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object with 'images', 'annotations' and 'categories', "
                        f"got {type(data).__name__}")
    keys = ("images",) if images_only else ("images", "annotations", "categories")
    for key in keys:
        if not isinstance(data.get(key), list):
            got = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise DataError(f"{path}: key {key!r} must be a list ({got})")

    images: Dict[Any, int] = {}
    kinds = set()
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            raise DataError(f"{path}: images[{k}] must be an object, got {type(im).__name__}")
        for f_ in image_fields:
            if f_ not in im:
                raise DataError(f"{path}: images[{k}] has no {f_!r}")
        iid = im.get("id")
        if not _is_id(iid):
            raise DataError(f"{path}: images[{k}]: id must be an integer or a string, got {short_repr(iid)}")
        kinds.add(type(iid))
        if len(kinds) > 1:
            raise DataError(f"{path}: images[{k}]: id {iid!r} mixes strings and integers among image ids")
        if iid in images:
            raise DataError(f"{path}: images[{k}]: image id {iid!r} listed twice (also images[{images[iid]}])")
        images[iid] = k
        if "file_name" in image_fields and not isinstance(im["file_name"], str):
            raise DataError(f"{path}: images[{k}]: file_name must be a string, got {short_repr(im['file_name'])}")
    if images_only:
        return {"images": len(images), "annotations": 0, "categories": 0}

    cats: Dict[int, int] = {}
    for k, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or (category_names and "name" not in c):
            raise DataError(f"{path}: categories[{k}] needs 'id'" + (" and 'name'" if category_names else ""))
        cid = c["id"]
        if not _is_int(cid):
            raise DataError(f"{path}: categories[{k}]: id must be an integer, got {short_repr(cid)}")
        if cid in cats:
            raise DataError(f"{path}: categories[{k}]: category id {cid} listed twice (also categories[{cats[cid]}])")
        if "name" in c and not isinstance(c["name"], str):
            raise DataError(f"{path}: categories[{k}]: name must be a string, got {short_repr(c['name'])}")
        cats[cid] = k

    anns: Dict[Any, int] = {}
    for k, a in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}]"
        if not isinstance(a, dict):
            raise DataError(f"{where} must be an object, got {type(a).__name__}")
        for f_ in ("id", "image_id", "category_id", "bbox"):
            if f_ not in a:
                raise DataError(f"{where} has no {f_!r}")
        aid = a["id"]
        if not _is_id(aid):
            raise DataError(f"{where}: id must be an integer or a string, got {short_repr(aid)}")
        if aid in anns:
            raise DataError(f"{where}: annotation id {aid!r} listed twice (also annotations[{anns[aid]}]); "
                            "pycocotools would silently keep only one of them")
        anns[aid] = k
        iid = a["image_id"]
        if not _is_id(iid) or iid not in images:
            raise DataError(f"{where}: image_id {short_repr(iid)} is not in 'images'")
        cid = a["category_id"]
        if not _is_int(cid) or cid not in cats:
            raise DataError(f"{where}: unknown category_id {short_repr(cid)} (not in 'categories')")
        if "iscrowd" in a or eval_fields:
            if "iscrowd" not in a:
                raise DataError(f"{where} has no 'iscrowd' (required for COCO evaluation)")
            if a["iscrowd"] not in (0, 1) or isinstance(a["iscrowd"], float):
                raise DataError(f"{where}: iscrowd must be 0 or 1, got {short_repr(a['iscrowd'])}")
        if "area" in a or eval_fields:
            if "area" not in a:
                raise DataError(f"{where} has no 'area' (required for COCO evaluation)")
            ar = a["area"]
            if isinstance(ar, bool) or not isinstance(ar, (int, float)) or not math.isfinite(ar) or ar < 0:
                raise DataError(f"{where}: area must be a finite number >= 0, got {short_repr(ar)}")
    return {"images": len(images), "annotations": len(anns), "categories": len(cats)}


def read_coco_json(path: Union[str, os.PathLike], what: str = "COCO annotation", **check) -> dict:
    """Load ``path`` with bounded nesting and check it (``check``: :func:`check_coco_dataset` options)."""
    data = load_json(path, what)
    check_coco_dataset(data, path, **check)
    return data


__all__ = ["check_coco_dataset", "read_coco_json"]
