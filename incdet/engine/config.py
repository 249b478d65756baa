"""Run configuration: YAML -> dataclasses with type checks, ``--set a.b=value`` overrides.

A run config has five sections::

    experiment: {name, seed, out, device, deterministic}
    tasks:      {builder: NAME, init_from: PATH|null, stop_after: N|null, ...options of that task builder}
    learner:    {name: NAME, ...fields of that learner's ``Config`` dataclass}
    train:      {iterations|epochs, batch_size, optimizer, lr, ..., first_task: {...}}
    eval:       {every_task, future_tasks, init_rows, metric}

Unknown keys raise :class:`ConfigError` listing the valid ones; values are checked against
the dataclass annotations (``int`` is accepted where ``float`` is expected, nothing else is
coerced, except that a string in exponent notation such as ``1e-3``, which PyYAML reads as
a string, is accepted as a float). The ``tasks`` options are validated against ``TASK_BUILDERS.get(builder).Config``
and the learner options against ``LEARNERS.get(name).Config``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import yaml

from incdet.errors import ConfigError

#: deepest nesting accepted in a config file or a ``--set`` value (a run config needs ~4)
MAX_DEPTH = 32


# --------------------------------------------------------------------------- value checks
def check_range(section: str, name: str, value, lo=None, hi=None, *, lo_open: bool = False,
                hi_open: bool = False, allow_none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``lo <= value <= hi`` (``<`` where ``lo_open`` /
    ``hi_open``; a bound of None is no bound). NaN and infinities are refused; None is
    accepted only with ``allow_none``. The message names ``section.name``, the valid range and
    the value, e.g. ``train.grad_clip must be > 0 or null, got -1``. For ``__post_init__`` of
    config dataclasses (``build_dataclass`` adds the file name) and for checks in code."""
    where = f"{section}.{name}" if section else name
    if value is None and allow_none:
        return
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    want = " and ".join(parts) or "a finite number"
    if allow_none:
        want += " or null"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        raise ConfigError(f"{where} must be {want}, got {value!r}")


def check_choice(section: str, name: str, value, choices) -> None:
    """Raise :class:`ConfigError` unless ``value in choices`` (message lists the choices)."""
    if value not in choices:
        where = f"{section}.{name}" if section else name
        raise ConfigError(f"{where} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def _depth(x) -> int:
    """Nesting depth of lists/dicts, computed without recursion."""
    best, stack = 0, [(x, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, tuple, dict)):
            best = max(best, d)
            if d > MAX_DEPTH:
                break
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return best


def _safe_yaml(text: str, what: str):
    """``yaml.safe_load`` whose nesting is bounded (deep input -> ConfigError, not RecursionError)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: invalid YAML: {e}") from None
    except RecursionError:
        data = None
        depth = MAX_DEPTH + 1
    else:
        depth = _depth(data)
    if depth > MAX_DEPTH:
        raise ConfigError(f"{what}: nested deeper than {MAX_DEPTH} levels")
    return data


# --------------------------------------------------------------------------- sections
@dataclass
class ExperimentConfig:
    name: str = "run"            #: run name; default run dir is ``{out}/{name}``
    seed: int = 0                #: seeds python, numpy, torch; data order is a function of (seed, task, epoch)
    out: str = "runs"            #: parent folder of run directories
    device: str = "auto"         #: auto | cpu | cuda | cuda:N (``--device`` overrides)
    deterministic: bool = False  #: torch.use_deterministic_algorithms(True)

    def __post_init__(self):
        check_range("experiment", "seed", self.seed, 0, SEED_MAX)
        from incdet.engine.distributed import check_device_name

        check_device_name(self.device, "experiment.device")


#: largest ``experiment.seed`` (torch.manual_seed takes 64-bit seeds; the driver mixes them mod 2**63 - 1)
SEED_MAX = 2**63 - 2


TRAIN_OVERRIDABLE = (
    "iterations", "epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "betas",
    "weight_decay", "lr_steps", "lr_gamma", "warmup_iters", "grad_clip", "checkpoint_every",
)


@dataclass
class TrainConfig:
    """Training schedule of every task (``first_task`` overrides some fields for task 0).

    Exactly one of ``iterations`` / ``epochs`` must be set. ``lr_steps`` are in the same unit
    (iterations, or epochs), counted from the start of each task: at each step the learning
    rate is multiplied by ``lr_gamma``. ``batch_size`` is the global batch (split over
    processes under DDP). ``checkpoint_every`` is in iterations (0: only at task ends).
    """

    iterations: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: int = 8
    num_workers: int = 0
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    lr_steps: List[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    warmup_iters: int = 0
    grad_clip: Optional[float] = None
    amp: Literal["none", "bf16", "fp16"] = "bf16"
    checkpoint_every: int = 500
    log_every: int = 20
    find_unused_parameters: bool = False
    first_task: Dict[str, Any] = field(default_factory=dict)

    def for_task(self, index: int) -> "TrainConfig":
        """The schedule of task ``index`` (task 0 gets the ``first_task`` overrides)."""
        if index == 0 and self.first_task:
            return dataclasses.replace(self, **self.first_task, first_task={})
        return self


@dataclass
class EvalConfig:
    """When and what the driver evaluates.

    ``future_tasks``: after task ``i`` also evaluate the tasks not trained yet (``R[i][j]`` for
    ``j > i``: e.g. the source model on the target domains, DANICE's "t=1" row); the summary
    and forgetting metrics use ``j <= i`` only.

    ``init_rows`` (runs started from ``tasks.init_from`` = another run's ``taskK.pt``): what
    happens to the rows ``0..K`` of the results matrix, which this run does not train.
    ``auto``: copied from the checkpoint's results (the other run's ``results.json`` at the end
    of task K) when they were measured the same way - the same ``tasks`` section (every
    task-builder option, ``init_from`` / ``stop_after`` aside), the same ``experiment.seed``
    when the task builder takes a seed, and the same values of the learner options that its
    evaluation depends on (``Learner.eval_keys``; all options when the learner does not say);
    otherwise row K is evaluated again with the loaded weights and rows ``< K`` are left empty
    (their weights are not at hand), with a warning naming the differences. ``copy``: the same,
    but a difference is a ConfigError. ``evaluate``: row K is always evaluated again (rows
    ``< K`` copied only when they match). In every mode the cells of row K that the other run
    did not measure (e.g. ``future_tasks`` off there) are evaluated.
    """

    every_task: bool = True         #: evaluate all seen tasks after each task (else after the last trained only)
    future_tasks: bool = False      #: also evaluate the tasks not trained yet after each task
    init_rows: Literal["auto", "copy", "evaluate"] = "auto"  #: rows of the tasks skipped by tasks.init_from
    metric: Optional[str] = None    #: metric that fills the results matrix (default: learner.primary_metric)


@dataclass
class TasksSection:
    builder: str = "classes"
    init_from: Optional[str] = None  #: a task-end checkpoint (RUN/checkpoints/taskK.pt) to start after
    stop_after: Optional[int] = None  #: train only the first N tasks (the others may still be evaluated: eval.future_tasks)
    options: Any = None              #: instance of TASK_BUILDERS.get(builder).Config


@dataclass
class LearnerSection:
    name: str = "toy"
    options: Any = None              #: instance of LEARNERS.get(name).Config


@dataclass
class RunConfig:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    tasks: TasksSection = field(default_factory=TasksSection)
    learner: LearnerSection = field(default_factory=LearnerSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = "<config>"         #: where it came from (for messages); not saved

    def to_dict(self) -> dict:
        """Plain dict in the YAML layout (tasks/learner options flattened into their section;
        tuples written as lists)."""
        return _plain({
            "experiment": dataclasses.asdict(self.experiment),
            "tasks": {"builder": self.tasks.builder, "init_from": self.tasks.init_from,
                      "stop_after": self.tasks.stop_after, **_asdict(self.tasks.options)},
            "learner": {"name": self.learner.name, **_asdict(self.learner.options)},
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
        })


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _asdict(obj) -> dict:
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return dict(obj)


# --------------------------------------------------------------------------- type checks
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def _type_name(tp) -> str:
    if tp is Any:
        return "any"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, List, Sequence):
        (a,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(a)}"
    if origin in (dict, Dict):
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _check(value, tp, where: str, source: str):
    """Return ``value`` converted to ``tp`` (only int->float and nested dataclasses) or raise."""
    def fail():
        raise ConfigError(f"{source}: {where} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")

    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            fail()
        return value
    if origin in (Union, types.UnionType):
        for a in typing.get_args(tp):
            try:
                return _check(value, a, where, source)
            except ConfigError:
                continue
        fail()
    if tp is type(None):
        if value is not None:
            fail()
        return None
    if origin in (list, List, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail()
        args = [x for x in typing.get_args(tp) if x is not Ellipsis]
        if origin is tuple and len(args) > 1:  # Tuple[int, str]: fixed length
            if len(value) != len(args):
                fail()
            return tuple(_check(v, x, f"{where}[{i}]", source) for i, (v, x) in enumerate(zip(value, args)))
        a = args[0] if args else Any
        out = [_check(v, a, f"{where}[{i}]", source) for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin in (dict, Dict) or tp is dict:
        if not isinstance(value, dict):
            fail()
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            fail()
        return build_dataclass(tp, value, where, source)
    if tp is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.match(value):  # PyYAML reads 1e-3 as a string
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail()
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            fail()
        return value
    return value


def build_dataclass(cls, data: Optional[dict], where: str = "", source: str = "<config>", extra_keys: Sequence[str] = ()):
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    data = {} if data is None else data
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or 'config'} must be a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]}; valid keys for {where or 'the config'}: "
            + ", ".join(sorted(list(fields) + list(extra_keys)))
        )
    kwargs = {k: _check(v, hints.get(k, Any), prefix + k, source) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a value check of __post_init__ (check_range): add the file
        msg = str(e)
        raise ConfigError(msg if msg.startswith(f"{source}: ") else f"{source}: {msg}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: invalid {where or 'config'}: {e}") from None


# --------------------------------------------------------------------------- loading
def load_yaml(path: Union[str, Path]) -> dict:
    """Read a YAML mapping; missing file, binary file, bad syntax, nesting deeper than
    :data:`MAX_DEPTH` or a top level that is not a mapping -> ConfigError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8: byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    data = _safe_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed with ``yaml.safe_load``) to a nested dict."""
    data = copy.deepcopy(data)
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=0.01")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"--set {item!r}: bad key {key!r} (dotted path like train.lr)")
        value = _safe_yaml(raw, f"--set {item!r}: value") if raw.strip() else None
        node = data
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


SECTIONS = ("experiment", "tasks", "learner", "train", "eval")


def config_from_dict(data: dict, source: str = "<config>") -> RunConfig:
    """Validate a raw dict (YAML layout) into a :class:`RunConfig`."""
    from incdet.engine import LEARNERS, TASK_BUILDERS
    from incdet.engine.plugins import ensure_learner, ensure_task_builder

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]}; valid keys for the config: {', '.join(SECTIONS)}")
    for s in SECTIONS:
        if data.get(s) is not None and not isinstance(data[s], dict):
            raise ConfigError(f"{source}: section {s} must be a mapping, got {type(data[s]).__name__}")
    exp = build_dataclass(ExperimentConfig, data.get("experiment"), "experiment", source)
    train = build_dataclass(TrainConfig, data.get("train"), "train", source)
    ev = build_dataclass(EvalConfig, data.get("eval"), "eval", source)

    # per-task overrides: only schedule keys, checked like train itself
    bad = [k for k in train.first_task if k not in TRAIN_OVERRIDABLE]
    if bad:
        raise ConfigError(f"{source}: unknown key train.first_task.{bad[0]}; valid keys for train.first_task: "
                          + ", ".join(sorted(TRAIN_OVERRIDABLE)))
    hints = typing.get_type_hints(TrainConfig)
    train.first_task = {k: _check(v, hints[k], f"train.first_task.{k}", source) for k, v in train.first_task.items()}
    _check_schedule(train, source)
    if train.first_task:
        _check_schedule(train.for_task(0), source, set(train.first_task))

    tasks_raw = dict(data.get("tasks") or {})
    builder = tasks_raw.pop("builder", "classes")
    init_from = tasks_raw.pop("init_from", None)
    if not isinstance(builder, str):
        raise ConfigError(f"{source}: tasks.builder must be str, got {builder!r}")
    if init_from is not None and not isinstance(init_from, str):
        raise ConfigError(f"{source}: tasks.init_from must be a path string, got {init_from!r}")
    stop_after = tasks_raw.pop("stop_after", None)
    if stop_after is not None:
        if isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1:
            raise ConfigError(f"{source}: tasks.stop_after must be an integer >= 1 or null, got {stop_after!r}")
    ensure_task_builder(builder)
    try:
        fn = TASK_BUILDERS.get(builder)
    except KeyError as e:
        raise ConfigError(f"{source}: tasks.builder: {e.args[0]}") from None
    tasks_cfg = build_dataclass(fn.Config, tasks_raw, "tasks", source, ("builder", "init_from", "stop_after"))

    learner_raw = dict(data.get("learner") or {})
    name = learner_raw.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"{source}: learner.name must be set to a learner name (a str)")
    ensure_learner(name)
    try:
        cls = LEARNERS.get(name)
    except KeyError as e:
        raise ConfigError(f"{source}: learner.name: {e.args[0]}") from None
    lcfg_cls = getattr(cls, "Config", None)
    if lcfg_cls is None or not dataclasses.is_dataclass(lcfg_cls):
        raise ConfigError(f"{source}: learner {name!r} has no Config dataclass")
    learner_cfg = build_dataclass(lcfg_cls, learner_raw, "learner", source, ("name",))

    return RunConfig(
        experiment=exp,
        tasks=TasksSection(builder=builder, init_from=init_from, stop_after=stop_after, options=tasks_cfg),
        learner=LearnerSection(name=name, options=learner_cfg),
        train=train,
        eval=ev,
        source=source,
    )


def _check_schedule(t: TrainConfig, source: str, first_task_keys=frozenset()) -> None:
    """Ranges of the schedule fields; keys in ``first_task_keys`` are named train.first_task.KEY."""
    def sec(k: str) -> str:
        return "train.first_task" if k in first_task_keys else "train"

    def rng(k: str, lo=None, hi=None, **kw) -> None:
        check_range(sec(k), k, getattr(t, k), lo, hi, **kw)

    try:
        if (t.iterations is None) == (t.epochs is None):
            raise ConfigError(f"{sec('iterations')}: set exactly one of iterations / epochs "
                              f"(got iterations={t.iterations}, epochs={t.epochs})")
        rng("iterations", 0, allow_none=True)
        rng("epochs", 0, allow_none=True)
        rng("batch_size", 1)
        rng("num_workers", 0)
        rng("lr", 0)
        rng("momentum", 0, 1)
        rng("weight_decay", 0)
        rng("lr_gamma", 0, lo_open=True)
        rng("warmup_iters", 0)
        rng("grad_clip", 0, lo_open=True, allow_none=True)
        rng("checkpoint_every", 0)
        rng("log_every", 1)
        if len(t.betas) != 2:
            raise ConfigError(f"{sec('betas')}.betas must be two numbers, got {t.betas}")
        for i, b in enumerate(t.betas):
            check_range(sec("betas"), f"betas[{i}]", b, 0, 1, hi_open=True)
        for i, m in enumerate(t.lr_steps):
            check_range(sec("lr_steps"), f"lr_steps[{i}]", m, 0)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: Union[str, Path], overrides: Sequence[str] = ()) -> RunConfig:
    """Load ``path`` (YAML), apply ``--set`` overrides, validate."""
    data = apply_overrides(load_yaml(path), overrides)
    return config_from_dict(data, source=str(path))


def save_config(cfg: RunConfig, path: Union[str, Path]) -> None:
    """Write the resolved config as YAML (atomically: :func:`incdet.engine.checkpoint.write_atomic`)."""
    from incdet.engine.checkpoint import write_atomic

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    write_atomic(path, lambda f: f.write(text))
