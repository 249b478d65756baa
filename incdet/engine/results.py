"""The results matrix and forgetting metrics.

``R[i][j]`` is the metric on task ``j`` measured right after training task ``i`` (NaN until
measured; ``j <= i`` is measured, and ``j > i`` too with ``eval.future_tasks``: the model on
tasks it has not been trained on yet). The summary metrics below use ``j <= i`` only. "Accuracy" below stands for whichever metric fills the
matrix (accuracy, mAP, PSNR, ...). For a metric where lower is better (bpp, BD-rate, loss) the
functions flip signs so that *forgetting is positive when the old task got worse* and *backward
transfer is positive when it got better*, whatever the metric's direction.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from incdet.engine.checkpoint import write_atomic

Matrix = Union[Sequence[Sequence[float]], np.ndarray]


def _arr(R: Matrix) -> np.ndarray:
    a = np.array([[np.nan if v is None else v for v in row] for row in R], dtype=float) if not isinstance(R, np.ndarray) else R.astype(float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"results matrix must be square T x T, got shape {a.shape}")
    return a


def average_accuracy(R: Matrix, i: Optional[int] = None) -> float:
    """Average accuracy after task ``i`` (default: the last row):
    ``A_i = 1/(i+1) * sum_{j=0..i} R[i][j]``. NaN if an entry is missing."""
    a = _arr(R)
    i = a.shape[0] - 1 if i is None else i
    return float(np.mean(a[i, : i + 1]))


def forgetting_per_task(R: Matrix, higher_is_better: bool = True) -> List[float]:
    """Forgetting of each task ``j = 0..T-2`` after the last task ``T-1`` (Chaudhry et al. 2018):
    ``f_j = max_{l in j..T-2} R[l][j] - R[T-1][j]`` (higher is better), or
    ``f_j = R[T-1][j] - min_{l in j..T-2} R[l][j]`` (lower is better). Positive = worse than the
    best value the task ever had. Missing entries (NaN) are ignored in the max/min."""
    a = _arr(R)
    T = a.shape[0]
    out = []
    for j in range(T - 1):
        past = a[j : T - 1, j]
        past = past[~np.isnan(past)]
        last = a[T - 1, j]
        if past.size == 0 or np.isnan(last):
            out.append(math.nan)
        elif higher_is_better:
            out.append(float(past.max() - last))
        else:
            out.append(float(last - past.min()))
    return out


def average_forgetting(R: Matrix, higher_is_better: bool = True) -> float:
    """Mean of :func:`forgetting_per_task` over tasks ``0..T-2`` (NaN when T < 2)."""
    f = forgetting_per_task(R, higher_is_better)
    return float(np.mean(f)) if f else math.nan


def backward_transfer(R: Matrix, higher_is_better: bool = True) -> float:
    """Backward transfer (Lopez-Paz & Ranzato 2017):
    ``BWT = 1/(T-1) * sum_{j=0..T-2} (R[T-1][j] - R[j][j])``, negated when lower is better, so
    negative BWT means forgetting. NaN when T < 2."""
    a = _arr(R)
    T = a.shape[0]
    if T < 2:
        return math.nan
    d = np.array([a[T - 1, j] - a[j, j] for j in range(T - 1)])
    return float(np.mean(d if higher_is_better else -d))


def summary(R: Matrix, higher_is_better: bool = True) -> Dict[str, object]:
    """All the above on the measured rows of ``R`` (rows up to the last one holding a value)."""
    a = _arr(R)
    done = [i for i in range(a.shape[0]) if not np.all(np.isnan(a[i]))]
    n = (done[-1] + 1) if done else 0
    sub = a[:n, :n]
    if n == 0:
        return {"tasks_done": 0}
    return {
        "tasks_done": n,
        "average_accuracy": average_accuracy(sub),
        "average_accuracy_per_task": [average_accuracy(sub, i) for i in range(n)],
        "final": [float(v) for v in sub[n - 1]],
        "average_forgetting": average_forgetting(sub, higher_is_better),
        "forgetting_per_task": forgetting_per_task(sub, higher_is_better),
        "backward_transfer": backward_transfer(sub, higher_is_better),
    }


def _clean(x):
    """NaN -> None (JSON null), recursively."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _num(v) -> float:
    """A metric value as float; ``None`` (how ``results.json`` writes NaN) becomes NaN."""
    return math.nan if v is None else float(v)


class ResultsMatrix:
    """``R[i][j]`` of one metric over a task sequence, plus every metric dict returned by
    ``evaluate`` (``all_metrics[i][j]``) and what the learner reported about each trained task
    (``task_summaries[i]``: ``Learner.task_summary``, e.g. its trainable parameters; None when
    not recorded)."""

    def __init__(self, tasks: Sequence[str], metric: str, higher_is_better: bool = True):
        self.tasks = list(tasks)
        self.metric = metric
        self.higher_is_better = bool(higher_is_better)
        T = len(self.tasks)
        self.R = np.full((T, T), np.nan)
        self.all_metrics: List[List[Optional[dict]]] = [[None] * T for _ in range(T)]
        self.task_summaries: List[Optional[dict]] = [None] * T

    def __getitem__(self, ij):
        return self.R[ij]

    def set(self, i: int, j: int, metrics: Dict[str, float]) -> None:
        """Record ``evaluate`` output of task ``j`` after training task ``i``."""
        if self.metric not in metrics:
            raise KeyError(f"evaluate() returned no {self.metric!r} (got {sorted(metrics)})")
        self.R[i, j] = _num(metrics[self.metric])
        self.all_metrics[i][j] = {k: _num(v) for k, v in metrics.items()}

    def summary(self) -> Dict[str, object]:
        return summary(self.R, self.higher_is_better)

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        """The ``results.json`` layout (NaN written as null)."""
        return _clean({
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "tasks": self.tasks,
            "matrix": self.R.tolist(),
            "summary": self.summary(),
            "all_metrics": self.all_metrics,
            "task_summaries": self.task_summaries,
        })

    @classmethod
    def from_dict(cls, d: dict) -> "ResultsMatrix":
        r = cls(d["tasks"], d["metric"], d["higher_is_better"])
        r.R = _arr(d["matrix"]) if r.tasks else r.R
        am = d.get("all_metrics")
        if am:
            r.all_metrics = [list(row) for row in am]
        ts = d.get("task_summaries")
        if isinstance(ts, list) and len(ts) == len(r.tasks):
            r.task_summaries = [x if isinstance(x, dict) else None for x in ts]
        return r

    def has(self, i: int, j: int) -> bool:
        """Whether ``R[i][j]`` was measured (an ``evaluate`` output is recorded)."""
        return self.all_metrics[i][j] is not None

    def set_task_summary(self, i: int, info: Optional[dict]) -> None:
        """Record ``Learner.task_summary`` of task ``i`` (values kept when JSON scalars;
        anything else is written as its ``str``)."""
        if info is None:
            self.task_summaries[i] = None
            return
        if not isinstance(info, dict):
            raise TypeError(f"task_summary() must return a dict or None, got {type(info).__name__}")
        out = {}
        for k, v in info.items():
            if isinstance(v, bool) or v is None or isinstance(v, str):
                out[str(k)] = v
            elif isinstance(v, int):
                out[str(k)] = int(v)
            elif isinstance(v, float) or hasattr(v, "__float__"):
                out[str(k)] = float(v)
            else:
                out[str(k)] = str(v)
        self.task_summaries[i] = out

    def to_markdown(self, digits: int = 2) -> str:
        head = "| after \\ on | " + " | ".join(self.tasks) + " |"
        sep = "|---" * (len(self.tasks) + 1) + "|"
        rows = []
        for i, t in enumerate(self.tasks):
            cells = ["" if np.isnan(v) else f"{v:.{digits}f}" for v in self.R[i]]
            rows.append(f"| {t} | " + " | ".join(cells) + " |")
        s = self.summary()
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        lines = [f"R[i][j] = {self.metric} ({arrow}) on task j after training task i", "", head, sep, *rows, ""]
        for k in ("average_accuracy", "average_forgetting", "backward_transfer"):
            if k in s:
                v = s[k]
                lines.append(f"- {k}: {'n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.{digits}f}'}")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["after_task"] + self.tasks)
        for i, t in enumerate(self.tasks):
            w.writerow([t] + ["" if np.isnan(v) else repr(float(v)) for v in self.R[i]])
        return buf.getvalue()

    def plot(self, path: Union[str, Path]) -> None:
        """Heatmap PNG of R (matplotlib, Agg backend)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        T = len(self.tasks)
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * T, 1.0 + 0.8 * T), dpi=100)
        cmap = "viridis" if self.higher_is_better else "viridis_r"
        im = ax.imshow(np.ma.masked_invalid(self.R), cmap=cmap)
        ax.set_xticks(range(T), self.tasks, rotation=45, ha="right")
        ax.set_yticks(range(T), self.tasks)
        ax.set_xlabel("evaluated on task")
        ax.set_ylabel("after training task")
        ax.set_title(self.metric)
        for i in range(T):
            for j in range(T):
                if not np.isnan(self.R[i, j]):
                    ax.text(j, i, f"{self.R[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        write_atomic(path, lambda f: fig.savefig(f, format="png"), binary=True)
        plt.close(fig)

    def write(self, run_dir: Union[str, Path]) -> None:
        """Write results.json, results.csv, results.md and results.png into ``run_dir``."""
        run_dir = Path(run_dir)
        write_atomic(run_dir / "results.json", lambda f: f.write(json.dumps(self.to_dict(), indent=2)))
        write_atomic(run_dir / "results.csv", lambda f: f.write(self.to_csv()))
        write_atomic(run_dir / "results.md", lambda f: f.write(self.to_markdown()))
        self.plot(run_dir / "results.png")


def load_results(path: Union[str, Path]) -> ResultsMatrix:
    from incdet.errors import CheckpointError

    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: no results.json (has the run finished a task?)")
    try:
        return ResultsMatrix.from_dict(json.loads(path.read_text()))
    except RecursionError:
        raise CheckpointError(f"{path}: not a results file: nested too deep") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path}: not a results file: {type(e).__name__}: {e}") from None
