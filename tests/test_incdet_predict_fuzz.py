"""Property-based fuzzing of the predict output naming (hypothesis).

Property (:func:`check_names`): for any list of input image paths, :func:`incdet.vis.output_stems`
either returns each input's file stem, and then no two output files (``STEM.json``,
``STEM_mask.png``, ``STEM_overlay.jpg``, the reserved ``predictions.json``) share a name, even on a
case-insensitive file system; or it raises ``DataError``, and then two of them really would have
collided (no false refusal). The oracle computes the collisions independently. The known-bad case
feeds the checker the naming without the check (the silent-overwrite bug of issue 16) and
expects it to be reported.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incdet.errors import DataError
from incdet.vis import output_stems

RESERVED = ("predictions.json",)
DEFAULT_EXAMPLES = 300
SLOW_EXAMPLES = 10000

_names = st.one_of(st.text(alphabet="abcdAB_x.", min_size=1, max_size=8),
                   st.sampled_from(["predictions", "PREDICTIONS", "x_overlay", "x_mask", "x.json"]))
_item = st.tuples(st.sampled_from(["", "a/", "b/", "A/"]), _names, st.sampled_from([".jpg", ".png", ".JPG", ".jpeg", ""]))
# half the lists have distinct stems (mostly accepted), half anything (mostly colliding)
_paths = st.one_of(st.lists(_item, min_size=1, max_size=6, unique_by=lambda t: t[1].casefold()),
                   st.lists(_item, min_size=1, max_size=6)).map(
    lambda items: [d + n + e for d, n, e in items if (n + e) not in (".", "..")] or ["x.jpg"])


def _collide(paths, with_mask: bool) -> bool:
    """Oracle: whether two outputs (or an output and a reserved name) share a case-folded name."""
    seen = {r.casefold() for r in RESERVED}
    for p in paths:
        stem = Path(p).stem
        names = [f"{stem}.json", f"{stem}_overlay.jpg"] + ([f"{stem}_mask.png"] if with_mask else [])
        for n in names:
            if n.casefold() in seen:
                return True
            seen.add(n.casefold())
    return False


def check_names(impl, paths, with_mask: bool) -> None:
    collide = _collide(paths, with_mask)
    try:
        stems = impl(paths, with_mask=with_mask, reserved=RESERVED)
    except DataError as e:
        assert collide, f"refused without a collision: {paths} ({e})"
        assert str(e).count("\n") == 0
        return
    assert not collide, f"colliding outputs accepted: {paths}"
    assert stems == [Path(p).stem for p in paths]


def unchecked_output_stems(paths, with_mask, reserved=()):
    """The bug: every input's stem, with no collision check (later images overwrite earlier ones)."""
    return [Path(p).stem for p in paths]


def run_property(impl, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None, report_multiple_bugs=False)
    @given(paths=_paths, with_mask=st.booleans())
    def prop(paths, with_mask):
        check_names(impl, paths, with_mask)

    prop()


@pytest.mark.parametrize("impl, bad", [(output_stems, False), (unchecked_output_stems, True)],
                         ids=["output_stems", "known-bad:no-check"])
def test_output_names_never_collide(impl, bad):
    if bad:
        with pytest.raises(AssertionError, match="colliding outputs accepted"):
            run_property(impl, DEFAULT_EXAMPLES)
    else:
        run_property(impl, DEFAULT_EXAMPLES)


@pytest.mark.slow
def test_output_names_never_collide_long():
    run_property(output_stems, SLOW_EXAMPLES)
