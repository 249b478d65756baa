"""Property-based test of the all-or-nothing output writer :class:`incdet.vis.StagedOutputs`
(hypothesis), used by ``incdet predict`` and ``blitznet predict``.

Property (:func:`check_staged`): starting from any folder content (or no folder), adding any
files and then either finishing or failing after any number of them leaves the folder as
before the block (failure: same names, same bytes, no staging folder; a folder this created is
removed) or as before plus the new files (success). A name added twice in one block (case
folded) is refused with ``DataError``, which is a failure like any other. The known-bad case is a writer that
writes each file at once (the partial-output bug of issue 16); the checker reports it.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incdet.errors import DataError
from incdet.vis import StagedOutputs

DEFAULT_EXAMPLES = 150
SLOW_EXAMPLES = 3000
_name = st.sampled_from(["a.json", "A.JSON", "a_overlay.jpg", "b.json", "b_mask.png", "predictions.json", "c.txt"])
_files = st.dictionaries(_name, st.binary(max_size=16), max_size=4)


class Boom(Exception):
    pass


class DirectWriter:
    """The bug: files written straight into the folder as they come."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)

    def __enter__(self):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def add(self, name, data):
        (self.out_dir / name).write_bytes(data)

    def __exit__(self, *exc):
        return None


def _content(d: Path):
    return None if not d.exists() else {p.name: p.read_bytes() for p in d.iterdir()}


def check_staged(writer, before, adds, fail_after, exists: bool) -> None:
    tmp = Path(tempfile.mkdtemp())
    try:
        out = tmp / "out"
        if exists:
            out.mkdir()
            for k, v in before.items():
                (out / k).write_bytes(v)
        start = _content(out)
        done = adds if fail_after is None else adds[:fail_after]
        folded = [k.casefold() for k, _ in done]
        duplicate = len(set(folded)) < len(folded)
        try:
            with writer(out) as st_:
                for i, (k, v) in enumerate(adds):
                    if fail_after is not None and i == fail_after:
                        raise Boom()
                    st_.add(k, v)
                if fail_after is not None:
                    raise Boom()
        except (Boom, DataError) as e:
            assert _content(out) == start, "a failed block left output behind"
            assert isinstance(e, Boom) or duplicate, f"refused without a duplicate name: {e}"
            return
        assert not duplicate, "a name added twice was accepted (one output overwrote another)"
        assert _content(out) == {**(start or {}), **dict(adds)}, "a finished block lost output"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_property(writer, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None, report_multiple_bugs=False)
    @given(before=_files, adds=st.lists(st.tuples(_name, st.binary(max_size=16)), max_size=5),
           fail_after=st.one_of(st.none(), st.integers(0, 5)), exists=st.booleans())
    def prop(before, adds, fail_after, exists):
        check_staged(writer, before, adds, fail_after, exists)

    prop()


@pytest.mark.parametrize("writer, bad", [(StagedOutputs, False), (DirectWriter, True)],
                         ids=["StagedOutputs", "known-bad:direct-writes"])
def test_all_or_nothing(writer, bad):
    if bad:
        with pytest.raises(AssertionError, match="left output behind|added twice"):
            run_property(writer, DEFAULT_EXAMPLES)
    else:
        run_property(writer, DEFAULT_EXAMPLES)


@pytest.mark.slow
def test_all_or_nothing_long():
    run_property(StagedOutputs, SLOW_EXAMPLES)
