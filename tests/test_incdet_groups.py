"""incdet.eval.groups: the task-group mAP helper shared by the learners."""
import math

import pytest


def test_group_map_percent_and_nan():
    """incdet.eval.groups.group_map: mean over a class group in %, NaN (no ground truth) left out."""
    from incdet.eval.groups import group_map, to_percent

    ap = {"a": 0.5, "b": float("nan"), "c": 0.25}
    assert group_map(ap, ["a", "b", "c"]) == 37.5
    assert group_map(ap, ["c"]) == 25.0 and to_percent(0.25) == 25.0
    assert math.isnan(group_map(ap, ["b"])) and math.isnan(group_map(ap, []))
    with pytest.raises(KeyError):
        group_map(ap, ["zzz"])
