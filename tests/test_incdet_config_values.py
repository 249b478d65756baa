"""Value checks of the incdet.fastrcnn learner config (``__post_init__``): a bad value is one
ConfigError naming the key and the valid range, when the config is read - never a silent run."""
from pathlib import Path

import pytest

from incdet.engine.config import load_config
from incdet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "configs" / "incdet" / "shapes_15+5.yaml"


@pytest.mark.parametrize("override, message", [
    ("learner.max_proposals=0", "learner.max_proposals must be >= 1, got 0"),
    ("learner.flip_prob=1.5", "learner.flip_prob must be >= 0 and <= 1, got 1.5"),
    ("learner.distill=kd", "learner.distill must be one of 'l2', 'ce', 'none', got 'kd'"),
    ("learner.distill_rois=200", "learner.distill_rois must be >= 1 and <= 128, got 200"),
    ("learner.distill_weight=-1", "learner.distill_weight must be >= 0, got -1"),
    ("learner.proposal_nms=0", "learner.proposal_nms must be > 0 and <= 1 or null, got 0"),
    ("learner.eval_batch_size=0", "learner.eval_batch_size must be >= 1, got 0"),
    ("learner.ewc_weight=-5", "learner.ewc_weight must be >= 0"),
    ("learner.model.nms_iou=0", "learner.model.nms_iou must be > 0 and <= 1, got 0"),
    ("learner.model.score_thresh=1", "learner.model.score_thresh must be >= 0 and < 1, got 1"),
    ("learner.model.freeze_at=5", "learner.model.freeze_at must be >= -1 and <= 2, got 5"),
    ("learner.model.rois_per_image=0", "learner.model.rois_per_image must be >= 1, got 0"),
    ("learner.model.max_size=10", "learner.model.max_size must be >= "),
    ("learner.model.width=12", "learner.model.width must be a multiple of 8, got 12"),
    ("learner.model.depth=42", "learner.model.depth must be one of 18, 34, 50, 101, got 42"),
    ("learner.model.box_std=[0.1,0.1,0.2,0]", "learner.model.box_std must be > 0, got 0"),
    # the old name of use_07_metric (renamed to match BlitzNet and voc_evaluate)
    ("learner.ap_07_metric=true", "unknown key learner.ap_07_metric"),
])
def test_bad_values_name_key_and_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(CFG, [override])
    assert message in str(e.value) and str(CFG) in str(e.value)


@pytest.mark.parametrize("cfg", sorted((REPO / "configs" / "incdet").glob("*.yaml")) +
                         sorted((REPO / "configs" / "blitznet").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_pass_the_checks(cfg):
    c = load_config(cfg)
    assert c.learner.options.use_07_metric in (True, False)


def test_old_checkpoint_key_is_read(tmp_path):
    """A checkpoint written before the rename (learner.ap_07_metric) still loads in the predictor."""
    from incdet.models.predict import renamed_learner_keys

    old = {"learner": {"name": "incdet.fastrcnn", "ap_07_metric": True, "distill": "l2"}, "train": {}}
    new = renamed_learner_keys(old)
    assert new["learner"] == {"name": "incdet.fastrcnn", "use_07_metric": True, "distill": "l2"}
    assert old["learner"]["ap_07_metric"] is True  # not modified in place
    assert renamed_learner_keys({"learner": {"name": "x"}}) == {"learner": {"name": "x"}}
