"""``codec rd-report``: the DANICE forgetting table (markdown) and RD plots (PNG) from runs.

Input: run directories written by the shared driver (``codec train CONFIG --out RUN``):
``RUN/config.yaml`` (the resolved config: ``tasks`` with the domain sequence and eval sets,
``learner`` with ``strategy`` and ``lmbda``) and ``RUN/results.json`` (``all_metrics[i][j]`` =
every metric of the model after task ``i`` on the eval set of task ``j``; runs with
``eval.future_tasks`` also hold ``j > i``, e.g. the source model on the target domains; rows of
tasks not trained, e.g. after ``tasks.stop_after``, are empty). One run = one strategy at one
lambda; an RD curve collects the runs of the same strategy over lambdas (DANICE: 0.002, 0.008,
0.016, 0.032).

Rows of the table:
- ``t=1 (source)``: the model after task 0 (the source codec), on every domain;
- ``t=i <strategy>`` for every later time ``i`` and strategy (naive, selective, cawf, adapters);
- ``joint``: runs with ``tasks.joint`` (one model trained on all domains; its last trained row);
- ``JPEG2000`` and ``JPEG`` (Pillow, on the same eval images).

Each cell is the BD-rate (%, PSNR, ``bjontegaard`` pchip) of that row's curve on that domain
against the anchor (``joint`` when present, else the source model ``t=1``), as in DANICE
Table 2; lower is better. Plots: one PNG per domain, PSNR vs bpp (real file sizes).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from codec.metrics import baseline_curve, bd_rate
from incdet.data.safeload import load_json
from incdet.errors import DataError

Curve = List[Dict[str, float]]


def load_run(run_dir) -> dict:
    """One driver run as ``{"config": the config.yaml dict, "tasks": names, "eval_names": the
    eval set of each task, "matrix": the trained rows (row ``i`` = list of metric dicts, None
    where not measured), "task_summaries", "_path"}``. Not a driver run -> DataError naming it."""
    from incdet.engine.config import load_yaml

    p = Path(run_dir)
    if p.is_file() and p.name == "results.json":
        p = p.parent
    f, c = p / "results.json", p / "config.yaml"
    if not f.is_file():
        raise DataError(f"{p}: no results.json (not a `codec train` run directory, or no task finished yet)")
    r = load_json(f, "codec results")
    if isinstance(r, dict) and "config" in r and "all_metrics" not in r:
        raise DataError(f"{f}: written by the removed `codec run`; train again with `codec train` "
                        f"(configs/codec/*.yaml)")
    if not isinstance(r, dict) or not isinstance(r.get("all_metrics"), list) or not isinstance(r.get("tasks"), list):
        raise DataError(f"{f}: not a driver results file (no 'all_metrics' / 'tasks')")
    if not c.is_file():
        raise DataError(f"{p}: no config.yaml beside results.json (not a `codec train` run directory)")
    cfg = load_yaml(c)
    tasks_cfg, learner = cfg.get("tasks") or {}, cfg.get("learner") or {}
    if "lmbda" not in learner or "strategy" not in learner:
        raise DataError(f"{c}: not a codec run (learner has no lmbda / strategy)")
    names = list(r["tasks"])
    am = r["all_metrics"]
    if len(am) != len(names) or any(not isinstance(row, list) or len(row) != len(names) for row in am):
        raise DataError(f"{f}: all_metrics is not a {len(names)} x {len(names)} matrix")
    done = [i for i, row in enumerate(am) if any(isinstance(x, dict) for x in row)]
    rows = [[x if isinstance(x, dict) else None for x in am[i]] for i in range(done[-1] + 1)] if done else []
    eval_sets = tasks_cfg.get("eval_sets") or {}
    return {"config": cfg, "tasks": names, "eval_names": [eval_sets.get(n, n) for n in names], "matrix": rows,
            "task_summaries": r.get("task_summaries") or [None] * len(names), "_path": str(f)}


def load_runs(run_dirs: Sequence) -> List[dict]:
    """:func:`load_run` of every directory (files other than ``results.json``, e.g. a baselines
    cache matched by a shell glob, are skipped)."""
    runs = []
    for d in run_dirs:
        p = Path(d)
        if p.is_file() and p.name != "results.json":
            continue
        runs.append(load_run(p))
    if not runs:
        raise DataError("codec rd-report: no run directories given")
    return runs


def collect_curves(runs: List[dict]) -> Dict[str, Dict[str, Curve]]:
    """``{row label: {domain: [points sorted by bpp]}}`` from runs (one point per lambda)."""
    rows: Dict[str, Dict[str, list]] = defaultdict(lambda: defaultdict(list))
    seen_source = set()
    for r in runs:
        lm = r["config"]["learner"]["lmbda"]
        strat = r["config"]["learner"]["strategy"]
        joint = r["config"]["tasks"].get("joint", False)
        names = r["tasks"]
        for i, row in enumerate(r["matrix"]):
            if joint:
                label = "joint"
                if i != len(r["matrix"]) - 1:
                    continue
            elif i == 0:
                label = "t=1 (source)"
                key = (lm, tuple(names))
                if key in seen_source:
                    continue
                seen_source.add(key)
            else:
                label = f"t={i + 1} {strat}"
            for j, cell in enumerate(row):
                if not cell or cell.get("bpp") is None or cell.get("psnr") is None:
                    continue  # not measured
                pt = {k: cell[k] for k in ("bpp", "bpp_est", "psnr", "ms_ssim") if cell.get(k) is not None}
                pt["lmbda"] = lm
                rows[label][names[j]].append(pt)
    return {lab: {d: sorted(p, key=lambda q: q["bpp"]) for d, p in doms.items()} for lab, doms in rows.items()}


def pareto(curve: Curve) -> Curve:
    """The points of a curve not dominated by a lower-rate point of the same curve (sorted by
    bpp, a point is kept only when its PSNR is above every lower-rate point's): the points an
    encoder would actually use. BD-rate needs PSNR increasing with rate."""
    out, best = [], -float("inf")
    for p in sorted(curve, key=lambda q: q["bpp"]):
        if p["psnr"] > best:
            out.append(p)
            best = p["psnr"]
    return out


def bd_rate_curves(anchor: Curve, test: Curve) -> float:
    """BD-rate of ``test`` against ``anchor`` over their non-dominated points (:func:`pareto`)."""
    anchor, test = pareto(anchor or []), pareto(test or [])
    if len(anchor) < 2 or len(test) < 2:
        return float("nan")
    return bd_rate([p["bpp"] for p in anchor], [p["psnr"] for p in anchor],
                   [p["bpp"] for p in test], [p["psnr"] for p in test])


def _fmt(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:+.2f}"


def _row_order(labels) -> List[str]:
    def key(l):
        if l.startswith("t=1"):
            return (0, l)
        if l.startswith("t="):
            return (1, l)
        if l == "joint":
            return (2, l)
        return (3, l)

    return sorted(labels, key=key)


def baseline_curves(runs: List[dict], domains: List[str], cache: Optional[Path] = None) -> Dict[str, Dict[str, Curve]]:
    """JPEG2000 / JPEG curves on the eval images of each domain (cached in ``cache``)."""
    from codec.learner import DomainTasksConfig, build_domain_tasks

    from codec.metrics import JPEG2000_RATIOS, JPEG_QUALITIES

    out = {"JPEG2000": {}, "JPEG": {}}
    if cache is not None and cache.is_file():
        out = load_json(cache, "baseline cache")
    want = {"JPEG2000": ("jpeg2000", JPEG2000_RATIOS), "JPEG": ("jpeg", JPEG_QUALITIES)}
    missing = {(key, d): [q for q in params if q not in {p.get("param") for p in out.get(key, {}).get(d, [])}]
               for key, (_, params) in want.items() for d in domains}
    if not any(missing.values()):
        return out
    import dataclasses

    fields = {f.name for f in dataclasses.fields(DomainTasksConfig)}
    cfg = {k: v for k, v in runs[0]["config"]["tasks"].items() if k in fields}  # builder, init_from, ... aside
    cfg["joint"] = False
    tasks = build_domain_tasks(DomainTasksConfig(**cfg))
    for t in tasks:
        if t.name not in domains or not any(missing[(k, t.name)] for k in want):
            continue
        imgs = [t.eval_set[i] for i in range(len(t.eval_set))]
        for key, (fmt, _) in want.items():
            need = missing[(key, t.name)]
            if need:  # only the points not in the cache yet
                pts = out.setdefault(key, {}).get(t.name, []) + baseline_curve(imgs, fmt, need)
                out[key][t.name] = sorted(pts, key=lambda p: p["bpp"])
    if cache is not None:
        write_text_atomic(cache, json.dumps(out, indent=1))
    return out


def make_report(run_dirs: Sequence, out_md, plots_dir=None, baselines: bool = True,
                title: str = "Codec: domain adaptation without forgetting", baselines_cache=None) -> str:
    """Write the markdown tables (and plots); returns the markdown text. JPEG / JPEG2000 curves
    are cached in ``baselines_cache`` (default: ``<out_md stem>_baselines.json`` beside it)."""
    runs = load_runs(run_dirs)
    curves = collect_curves(runs)
    domains = list(runs[0]["tasks"])
    eval_names = runs[0].get("eval_names", domains)
    out_md = Path(out_md)
    if baselines:
        cache = Path(baselines_cache) if baselines_cache else out_md.parent / (out_md.stem + "_baselines.json")
        curves.update(baseline_curves(runs, domains, cache))
    labels = _row_order(curves)
    lines = [f"# {title}", ""]
    # the source model first (the target: gain over the unadapted source), then the
    # DANICE anchor (joint training), then the classical codecs
    anchors = [a for a in ("t=1 (source)", "joint", "JPEG2000", "JPEG") if a in curves]
    for k, anchor_label in enumerate(anchors):
        lines += bd_table(curves, labels, domains, eval_names, anchor_label, level="##" if k else None)
    if not anchors:
        lines += ["(no anchor curve: neither a source model nor a baseline)", ""]
    lines += ["", "## RD points", "", "| row | domain | lambda/param | bpp | bpp (estimate) | PSNR | MS-SSIM |", "|---|---|---|---|---|---|---|"]
    for lab in labels:
        for d in domains:
            for p in curves[lab].get(d, []):
                par = p.get("lmbda", p.get("param", ""))
                lines.append(f"| {lab} | {d} | {par} | {p['bpp']:.4f} | {p.get('bpp_est', float('nan')):.4f} | "
                             f"{p['psnr']:.2f} | {p.get('ms_ssim', float('nan')):.4f} |")
    lines += ["", "Runs: " + ", ".join(f"`{r['_path']}`" for r in runs), ""]
    if plots_dir is not None:
        paths = plot_curves(curves, domains, Path(plots_dir), eval_names)
        rel = [Path(p).resolve() for p in paths]
        lines += ["## RD plots", ""]
        for p in rel:
            try:
                shown = p.relative_to(out_md.parent.resolve())
            except ValueError:
                shown = p
            lines.append(f"![{p.stem}]({shown})")
        lines.append("")
    text = "\n".join(lines)
    write_text_atomic(out_md, text)
    return text


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`incdet.engine.checkpoint.write_atomic`:
    temp file beside it, fsync, rename): no partial file. The folder is created when missing."""
    from incdet.engine.checkpoint import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: f.write(text))


def bd_table(curves, labels, domains, eval_names, anchor_label: str, level: Optional[str] = None) -> List[str]:
    """Markdown lines: BD-rate of every row against ``anchor_label``, per domain + average."""
    anchor = curves.get(anchor_label, {})
    out = []
    if level:
        out += [f"{level} BD-rate against {anchor_label}", ""]
    out += [f"BD-rate (%, PSNR, pchip; lower is better) against **{anchor_label}**, per domain "
            f"(eval set in parentheses). Rates are real file sizes (header included). Points dominated by a "
            f"lower-rate point of the same curve are left out (n/a: fewer than 2 points left or no PSNR overlap).", ""]
    out.append("| | " + " | ".join(f"{d} ({e})" for d, e in zip(domains, eval_names)) + " | avg |")
    out.append("|---" * (len(domains) + 2) + "|")
    for lab in labels:
        vals = [bd_rate_curves(anchor.get(d, []), curves[lab].get(d, [])) for d in domains]
        fin = [v for v in vals if math.isfinite(v)]
        avg = sum(fin) / len(fin) if len(fin) == len(vals) and fin else float("nan")
        out.append(f"| {lab} | " + " | ".join(_fmt(v) for v in vals) + f" | {_fmt(avg)} |")
    out.append("")
    return out


_COLORS = {"naive": "tab:red", "selective": "tab:green", "cawf": "tab:blue", "adapters": "tab:orange"}


def _style(label: str) -> dict:
    """Line style of a row: colour by strategy, line/marker by time; baselines grey."""
    if label == "JPEG2000":
        return {"color": "0.45", "ls": "--", "marker": "x", "ms": 4}
    if label == "JPEG":
        return {"color": "0.65", "ls": ":", "marker": "+", "ms": 5}
    if label == "joint":
        return {"color": "tab:purple", "ls": "-", "marker": "D", "ms": 3, "lw": 1.5}
    if label.startswith("t=1"):
        return {"color": "black", "ls": "-", "marker": "o", "ms": 3, "lw": 1.8}
    parts = label.split()
    color = _COLORS.get(parts[-1]) if len(parts) > 1 else None
    t = parts[0]
    return {"color": color, "ls": "--" if t == "t=2" else "-", "marker": "s" if t == "t=2" else "^", "ms": 3, "lw": 1.0}


def plot_curves(curves: Dict[str, Dict[str, Curve]], domains: List[str], out_dir: Path,
                eval_names: Optional[List[str]] = None) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in domains:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for lab in _row_order(curves):
            pts = curves[lab].get(d, [])
            if pts:
                ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], label=lab, **_style(lab))
        learned = [p["bpp"] for lab in curves if lab not in ("JPEG", "JPEG2000") for p in curves[lab].get(d, [])]
        if learned:  # keep the learned codecs readable: baselines clipped to their rate range
            ax.set_xlim(0, max(learned) * 2.0)
            lp = [p["psnr"] for lab in curves if lab not in ("JPEG", "JPEG2000") for p in curves[lab].get(d, [])]
            ax.set_ylim(min(lp) - 2, max(lp) + 8)
        ax.set_xlabel("bpp (file bytes)")
        ax.set_ylabel("PSNR (dB, 8-bit RGB)")
        ax.set_title(f"{d} ({eval_names[domains.index(d)]})" if eval_names else d)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / f"rd_{Path(d).name}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
