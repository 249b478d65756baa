"""Learners / task builders found by name through entry points; the driver names no family (issue 17)."""
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from incdet.engine.config import config_from_dict, load_config
from incdet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "configs" / "toy.yaml"
SECTIONS = {"experiment", "tasks", "learner", "train", "eval"}
DRIVER_CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml")
                        if set(yaml.safe_load(p.read_text()) or {}) <= SECTIONS)


def test_engine_source_names_no_family():
    for py in (REPO / "incdet" / "engine").rglob("*.py"):
        hits = [ln for ln in py.read_text().splitlines() if re.search(r"families|codec|blitznet", ln)]
        assert not hits, (py, hits)


def test_names_are_loaded_lazily_in_a_fresh_interpreter():
    code = """
import json, sys
from incdet.engine import LEARNERS, TASK_BUILDERS
before = sorted(m for m in ("blitznet", "codec", "incdet.models", "incdet.data.builder") if m in sys.modules)
from incdet.engine.config import load_config
cfg = load_config("configs/blitznet/shapes_15+5.yaml")
import incdet.models.cli
print(json.dumps({"before": before, "blitznet": "blitznet" in LEARNERS, "classes": "classes" in TASK_BUILDERS,
                  "codec_loaded": "codec" in sys.modules, "cli_cycle": "incdet.cli" in sys.modules}))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"before": [], "blitznet": True, "classes": True, "codec_loaded": False, "cli_cycle": False}


@pytest.mark.parametrize("path", DRIVER_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_driver_config_validates(path):
    cfg = load_config(path)
    assert cfg.learner.name and cfg.tasks.builder


def test_every_family_is_registered():
    from incdet.engine import LEARNERS, TASK_BUILDERS
    from incdet.engine.plugins import load_all

    load_all()
    assert {"toy", "incdet.fastrcnn", "blitznet", "codec.adapters"} <= set(LEARNERS.names())
    assert {"toy", "classes", "domains"} <= set(TASK_BUILDERS.names())


@pytest.mark.parametrize("section, key, words", [
    ("learner", "name", ["unknown learner 'nope'", "toy", "incdet.fastrcnn", "blitznet", "codec.adapters"]),
    ("tasks", "builder", ["unknown task builder 'nope'", "classes", "domains", "toy"]),
])
def test_unknown_names_list_the_known_ones(section, key, words):
    data = yaml.safe_load(TOY.read_text())
    data[section][key] = "nope"
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, source="x.yaml")
    for w in words:
        assert w in str(e.value)


def test_a_prefix_entry_point_serves_dotted_names():
    from incdet.engine.plugins import _candidates

    assert _candidates("codec.adapters") == ["codec.adapters", "codec"]
    data = yaml.safe_load((REPO / "configs" / "codec" / "driver_tiny.yaml").read_text())
    assert config_from_dict(data).learner.name.startswith("codec.")


def test_first_n_items():
    from incdet.data.builder import First

    class DS:
        classes = ["a", "b"]

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return i * 10

        def annotation(self, i):
            return {"i": i}

    f = First(DS(), 3)
    assert len(f) == 3 and [f[i] for i in range(3)] == [0, 10, 20] and f.classes == ["a", "b"]
    assert f.annotation(1) == {"i": 1} and len(First(DS(), 99)) == 5
    with pytest.raises(IndexError):
        f[3]
    g = pickle.loads(pickle.dumps(First(list(range(4)), 2)))  # DataLoader workers pickle it
    assert len(g) == 2 and g[1] == 1
