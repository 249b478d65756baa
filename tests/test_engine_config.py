"""Config loading: unknown keys, wrong types, --set overrides, per-task overrides."""
from pathlib import Path

import pytest
import yaml

from incdet.engine.config import apply_overrides, config_from_dict, load_config
from incdet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "configs" / "toy.yaml"


def test_toy_config_loads_and_round_trips():
    cfg = load_config(TOY)
    assert cfg.learner.name == "toy" and cfg.learner.options.hidden == 32
    assert cfg.tasks.builder == "toy" and cfg.tasks.options.n_tasks == 3
    assert cfg.train.for_task(0).iterations == 80 and cfg.train.for_task(1).iterations == 60
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()


def test_set_overrides_parse_yaml_values():
    cfg = load_config(TOY, ["train.lr=1e-3", "learner.hidden=8", "train.lr_steps=[5, 7]", "eval.metric=error"])
    assert cfg.train.lr == 1e-3 and cfg.learner.options.hidden == 8
    assert cfg.train.lr_steps == [5, 7] and cfg.eval.metric == "error"


@pytest.mark.parametrize("override, words", [
    ("train.lrr=0.1", ["unknown key train.lrr", "lr_gamma", "weight_decay"]),
    ("learner.hiden=3", ["unknown key learner.hiden", "hidden", "distill"]),
    ("tasks.n_task=3", ["unknown key tasks.n_task", "n_tasks", "init_from"]),
    ("bogus.x=1", ["unknown key bogus", "experiment, tasks, learner, train, eval"]),
    ("train.first_task.amp=fp16", ["train.first_task.amp", "iterations"]),
])
def test_unknown_keys_list_valid_keys(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(TOY, [override])
    for w in words:
        assert w in str(e.value)
    assert "toy.yaml" in str(e.value)


@pytest.mark.parametrize("override, words", [
    ("train.lr=fast", ["train.lr must be float", "'fast'"]),
    ("train.batch_size=2.5", ["train.batch_size must be int"]),
    ("train.nesterov=3", ["train.nesterov must be bool"]),
    ("train.optimizer=rmsprop", ["train.optimizer must be one of", "'sgd'"]),
    ("learner.hidden=[1]", ["learner.hidden must be int"]),
    ("train.epochs=2", ["exactly one of iterations / epochs"]),
    ("learner.name=nope", ["unknown learner 'nope'", "toy"]),
])
def test_wrong_types_and_values(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(TOY, [override])
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("bad", ["train.lr", "=3", "train..lr=1", "train.lr=[1,"])
def test_bad_set_syntax(bad):
    with pytest.raises(ConfigError) as e:
        apply_overrides({}, [bad])
    assert "--set" in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(p)
    p.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="section train must be a mapping"):
        load_config(p)


def test_nested_and_tuple_fields_round_trip():
    from dataclasses import dataclass, field
    from typing import Tuple

    from incdet.engine.config import build_dataclass

    @dataclass
    class Inner:
        std: Tuple[float, ...] = (0.1, 0.2)
        pair: Tuple[int, str] = (1, "a")

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)
        n: int = 1

    o = build_dataclass(Outer, {"inner": {"std": [1, 2.5], "pair": [3, "b"]}}, "learner")
    assert o.inner.std == (1.0, 2.5) and o.inner.pair == (3, "b")
    with pytest.raises(ConfigError, match="unknown key learner.inner.x; valid keys for learner.inner: pair, std"):
        build_dataclass(Outer, {"inner": {"x": 1}}, "learner")
    with pytest.raises(ConfigError, match="learner.inner.pair must be"):
        build_dataclass(Outer, {"inner": {"pair": [1]}}, "learner")
