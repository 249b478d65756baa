"""Rate versus detection accuracy on shapes-voc (issue 7): codecs adapted to the detector's
image domain against the source codec, JPEG and JPEG2000; ``docs/results/codec_detector.md``.

    python tools/codec_detector_experiments.py all   --out runs/codec_shapes   # train, eval, doc
    python tools/codec_detector_experiments.py train --out runs/codec_shapes
    python tools/codec_detector_experiments.py eval  --out runs/codec_shapes
    python tools/codec_detector_experiments.py doc   --out runs/codec_shapes

``train``: ``tools/codec_experiments.py run`` with ``configs/codec/shapes_cpu.yaml`` (every run
is ``codec train``, the shared driver): a source codec per lambda trained on natural
photographs (PACS photo), then CAwF and adapters adapted from it to the shapes-voc training
images (two-task sequence photo -> shapes; ``tasks.init_from`` the source run). The codecs are
the driver's task-end checkpoints ``OUT/<run>/checkpoints/taskK.pt``. Finished runs are skipped
and unfinished ones resumed, so an interrupted ``train`` resumes.

``eval``: ``tools/codec_detector_eval.py`` on the shapes-voc test split with the two trained detectors
(defaults: the incdet 15+5 distillation model after its second task, and the joint BlitzNet, both
trained by the commands of ``docs/results/incdet.md`` / ``docs/results/blitznet.md``): JPEG,
JPEG2000, the source codecs and the adapted codecs (their shapes domain) at every rate, plus the
CAwF bitstream-compatibility check -> ``OUT/eval/results.{json,md}``, ``rate_accuracy.png``.

``doc``: ``docs/results/codec_detector.md`` (+ the picture in ``docs/results/codec_detector/``)
from those results, with the commands, hardware and wall times, and ``--notes``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import codec_detector_eval as de  # noqa: E402  (the evaluation harness)
from _common import fmt_number, hardware_line, save_json  # noqa: E402  (shared doc helpers)

CONFIG = "configs/codec/shapes_cpu.yaml"
LAMBDAS = (0.002, 0.008, 0.016, 0.032)
INCDET = "runs/incdet_exp/15+5_distill/checkpoints/task1.pt"
INCDET_CMD = "python tools/incdet_experiments.py run --out runs/incdet_exp --only 15+5_distill"
BLITZNET = "runs/blitznet_exp/joint/checkpoint.pt"
BLITZNET_CMD = "python tools/blitznet_experiments.py run --out runs/blitznet_exp --only joint"
JPEG = (5, 10, 20, 40)
JPEG2000 = (100, 50, 25, 12)
NEURAL = (("source", "src", 0), ("CAwF", "cawf", 1), ("adapters", "adapters", 1))  # label, run prefix, task


def _lam(l: float) -> str:
    return f"{l:g}"


def codec_checkpoint(out: Path, prefix: str, lmbda: float, task: int) -> Path:
    """The codec after ``task`` of run ``<prefix>_<lambda>`` (a driver task-end checkpoint)."""
    return Path(out) / f"{prefix}_{_lam(lmbda)}" / "checkpoints" / f"task{task}.pt"


def _timing(out: Path) -> dict:
    p = out / "detector_timing.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _save_timing(out: Path, key: str, seconds: float) -> None:
    t = _timing(out)
    t[key] = round(seconds, 1)
    save_json(out / "detector_timing.json", t)


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def train_cmd(a) -> List[str]:
    return [sys.executable, str(ROOT / "tools" / "codec_experiments.py"), "run", "--out", str(a.out),
            "--config", a.config, "--strategies", "cawf", "adapters", "--no-joint", "--no-check",
            "--jobs", str(a.jobs), "--lambdas", *[_lam(l) for l in a.lambdas]]


def eval_cmd(a) -> List[str]:
    out = Path(a.out)
    cmd = [sys.executable, str(ROOT / "tools" / "codec_detector_eval.py"), "--data", a.data, "--split", a.split,
           "--incdet", a.incdet, "--blitznet", a.blitznet,
           "--jpeg", *[str(q) for q in a.jpeg], "--jpeg2000", *[str(r) for r in a.jpeg2000],
           "--out", str(out / "eval"), "--device", a.device]
    if a.max_images:
        cmd += ["--max-images", str(a.max_images)]
    for label, prefix, task in NEURAL:
        cks = [str(codec_checkpoint(out, prefix, l, task)) for l in a.lambdas]
        cmd += ["--neural", f"{label}=" + ",".join(cks)]
    cmd += ["--compat", "source:CAwF", "--compat-max-images", str(a.compat_images)]
    return cmd


def _check_inputs(a) -> None:
    for path, how in ((a.incdet, INCDET_CMD), (a.blitznet, BLITZNET_CMD)):
        if not (ROOT / path).is_file() and not Path(path).is_file():
            raise SystemExit(f"{path}: detector checkpoint not found; train it with `{how}` or pass its path")
    out = Path(a.out)
    for label, prefix, task in NEURAL:
        for l in a.lambdas:
            ck = codec_checkpoint(out, prefix, l, task)
            if not ck.is_file():
                raise SystemExit(f"{ck}: codec checkpoint not found; run `python tools/codec_detector_experiments.py "
                                 f"train --out {a.out}` first")


def _run(cmd: List[str], out: Path, key: str) -> int:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT, env=_env())
    if rc == 0:
        _save_timing(out, key, time.time() - t0)
    return rc


def train(a) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    return _run(train_cmd(a), out, "train_seconds_last_invocation")


def evaluate(a) -> int:
    _check_inputs(a)
    return _run(eval_cmd(a), Path(a.out), "eval_seconds")


# ---------------------------------------------------------------------------------------- doc
def _read_cmd(ckpt: str) -> str:
    """The training command recorded beside a detector checkpoint (``command.txt`` of its run)."""
    p = Path(ckpt)
    for d in (p.parent, p.parent.parent):
        f = d / "command.txt"
        if f.is_file():
            return f.read_text().strip()
    return "?"


def dominates(rows, metric: str, a: str, b: str) -> str:
    """A sentence when some point of codec ``a`` is at most the highest rate of codec ``b`` yet
    more accurate than every point of ``b`` ("" otherwise)."""
    pa = [r for r in rows if r["codec"] == a and r.get(metric) is not None and math.isfinite(r[metric])]
    pb = [r for r in rows if r["codec"] == b and r.get(metric) is not None and math.isfinite(r[metric])]
    if not pa or not pb:
        return ""
    best_b = max(pb, key=lambda r: r[metric])
    top_rate = max(r["bpp"] for r in pb)
    wins = [r for r in pa if r["bpp"] <= top_rate and r[metric] > best_b[metric]]
    if not wins:
        return ""
    w = min(wins, key=lambda r: r["bpp"])
    return (f"{a} at {w['bpp']:.3f} bpp ({w[metric]:.2f}) is more accurate than every {b} point "
            f"(best {best_b[metric]:.2f} at {best_b['bpp']:.3f} bpp, highest rate {top_rate:.3f} bpp)")


def verdict(res: dict, adapted=("CAwF", "adapters"), anchors=("source", "JPEG2000"), fraction: float = 0.9) -> List[str]:
    """Lines comparing every adapted codec with every anchor per detector metric: BD-rate over
    the accuracy-rate curves and the bpp needed to reach ``fraction`` of the uncompressed accuracy."""
    lines = []
    for k, tab in res["bd_rate"].items():
        rat = res.get("rate_at_accuracy", {}).get(k, {})
        for t in adapted:
            for an in anchors:
                if t not in tab or an not in tab[t]:
                    continue
                bd = tab[t][an]
                rt, ra = rat.get(t, {}).get(f"{fraction:g}"), rat.get(an, {}).get(f"{fraction:g}")
                dom = dominates(res["rows"], k, an, t)
                if bd is None or not math.isfinite(bd):
                    word = "BD-rate undefined (curves too short or not overlapping)"
                    if dom:
                        word += f"; {dom}"
                else:
                    word = f"BD-rate {bd:+.1f} % ({'fewer' if bd < 0 else 'more'} bits at equal accuracy)"
                lines.append(f"- {k}: {t} vs {an}: {word}; bpp to reach {fraction * 100:g} % of the uncompressed "
                             f"accuracy {fmt_number(rt, 3, sign=False)} vs {fmt_number(ra, 3, sign=False)}.")
    return lines


def write_doc(a) -> int:
    out = Path(a.out)
    ev = out / "eval" / "results.json"
    if not ev.is_file():
        print(f"{ev}: not found; run `python tools/codec_detector_experiments.py eval --out {a.out}`", file=sys.stderr)
        return 1
    res = json.loads(ev.read_text())
    rows = [{k: (float("nan") if v is None else v) for k, v in r.items()} for r in res["rows"]]  # nulls -> NaN
    pics = Path(a.plots)
    pics.mkdir(parents=True, exist_ok=True)
    res_nan = dict(res, rows=rows)
    de.plot(res_nan, pics / "rate_accuracy.png")
    body = (out / "eval" / "results.md").read_text().split("\n", 2)[2]  # drop its title
    body = body.replace(f"{ROOT}/", "")
    psnr_bd = de.bd_rate_table(rows, "psnr")
    timing = _timing(out)
    codec_timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").is_file() else {"jobs": {}}
    train_s = sum(v["seconds"] for v in codec_timing["jobs"].values())
    src_row = next(r for r in rows if r["codec"] == de.ORIGINAL)
    L = [f"# Rate versus detection accuracy: codecs adapted to the detector's domain (shapes-voc {res['split']})", "",
         "Regenerate everything (codec training, evaluation, this file and its picture):", "",
         "```", f"python tools/codec_detector_experiments.py all --out {a.out}", "```", "",
         f"This file alone from finished runs: `python tools/codec_detector_experiments.py doc --out {a.out}`.", "",
         f"- Hardware: {hardware_line('', '')}.",
         f"- Wall time: codec training {train_s / 60:.1f} min summed over its runs "
         f"(`{out}/timing.json`); evaluation {timing.get('eval_seconds', float('nan')) / 60:.1f} min "
         f"(`{res['images']}` test images x {len(rows)} rows, two detectors, proposals recomputed on every decoded image).",
         f"- Codecs: `{CONFIG}` (factorized prior, N = 64): per lambda ({', '.join(_lam(l) for l in a.lambdas)}) a "
         "**source** codec trained on natural photographs (PACS photo, the schedule of `docs/results/codec.md`), then "
         "adapted to the shapes-voc *training* images (`ImageSets/Main/train.txt`) by **CAwF** (K = 16 custom filters, "
         "a new entropy model; the source branch frozen) and by **adapters** (decoder adapters + gate, soft policy); "
         "the adapted codecs encode the test images in their shapes domain. JPEG (Pillow, qualities "
         f"{', '.join(str(q) for q in a.jpeg)}) and JPEG2000 (Pillow/OpenJPEG, irreversible 9/7, colour transform, "
         f"compression ratios {', '.join(str(r) for r in a.jpeg2000)}).",
         f"- Detectors: **incdet** `{a.incdet}` (Fast R-CNN after the incremental step 15+5 with distillation; "
         f"trained by `{_read_cmd(a.incdet)}`, i.e. `{INCDET_CMD}`) and **BlitzNet** `{a.blitznet}` (joint detection + "
         f"segmentation; trained by `{_read_cmd(a.blitznet)}`, i.e. `{BLITZNET_CMD}`). Uncompressed test images: "
         + ", ".join(f"{k} {fmt_number(src_row.get(k), sign=False)}" for k in de.metric_keys(rows)) + ".",
         f"- Evaluation command (run by `eval`): `{res.get('command', '')}`.", "",
         f"![mAP / mIoU against bpp]({pics.relative_to(Path(a.doc).parent) if pics.is_relative_to(Path(a.doc).parent) else pics}/rate_accuracy.png)",
         "", "## Against the issue's target", "",
         "The adapted codec should reach a given accuracy at a lower bpp than the source codec and than JPEG2000:", ""]
    L += verdict(res) + [""]
    L += ["PSNR BD-rate on the same test images (row vs column, %; negative = fewer bits at equal PSNR):", "",
          "| codec \\ anchor | " + " | ".join(psnr_bd) + " |", "|---|" + "---|" * len(psnr_bd)]
    for t in psnr_bd:
        L.append(f"| {t} | " + " | ".join(fmt_number(psnr_bd[t][x], sign=True) for x in psnr_bd) + " |")
    L += ["", "## Results", "", body.strip(), ""]
    if a.notes and Path(a.notes).is_file():
        L += ["## Notes", "", Path(a.notes).read_text().strip(), ""]
    Path(a.doc).write_text("\n".join(L) + "\n")
    print(f"wrote {a.doc} and {pics / 'rate_accuracy.png'}")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["all", "train", "eval", "doc"])
    p.add_argument("--out", default="runs/codec_shapes")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    p.add_argument("--jobs", type=int, default=2, help="codec training runs at a time")
    p.add_argument("--data", default="data/shapes-voc")
    p.add_argument("--split", default="test")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--compat-images", type=int, default=50, help="test images in the CAwF compatibility check")
    p.add_argument("--incdet", default=INCDET)
    p.add_argument("--blitznet", default=BLITZNET)
    p.add_argument("--jpeg", type=int, nargs="+", default=list(JPEG))
    p.add_argument("--jpeg2000", type=float, nargs="+", default=list(JPEG2000))
    p.add_argument("--device", default="auto")
    p.add_argument("--doc", default="docs/results/codec_detector.md")
    p.add_argument("--plots", default="docs/results/codec_detector")
    p.add_argument("--notes", default="tools/codec_detector_experiments_notes.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    steps = {"train": [train], "eval": [evaluate], "doc": [write_doc], "all": [train, evaluate, write_doc]}[a.what]
    for step in steps:
        rc = step(a)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
