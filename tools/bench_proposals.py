"""Selective search at scale: images/s of ``incdet proposals`` with 1 process vs N processes.

Runs :func:`incdet.models.proposals.compute_for_images` (the code behind ``incdet proposals``)
on the first ``--images`` images of a VOC/COCO split at their full size (selective search
itself works on a copy downscaled to ``--max-side``, 500 by default: VOC images are at most 500
px, so they are not downscaled), alternating 1 process and ``--workers`` processes
(``--repeats`` times each, 1 process first in even rounds, last in odd ones), and once more
with ``--workers`` processes through the resumable cache (its cost). Checks that every run
gives exactly the same boxes as the first 1-process run. The 1-minute load average of the
machine is recorded before and after each run: on a shared machine other jobs take CPU time
and the speed-up falls below what the cores allow. A calibration before and after (the same
process pool on a perfectly parallel CPU-bound job) gives the most any code could gain right
now; the CPU seconds per image (parent and workers) show whether the pool adds work.

    python tools/bench_proposals.py --data ../shared/data/voc2012-100/VOCdevkit/VOC2012 --split trainval \\
        --images 30 --repeats 3 --workers 2 --json docs/results/bench/bench_proposals_voc2012_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from incdet.models.proposals import compute_for_images, voc_image_list


def _burn(n: int) -> int:
    """A CPU-bound job with no I/O and no memory traffic (calibration)."""
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def calibrate(workers: int, jobs: int = 16, n: int = 3_000_000) -> dict:
    """Speed-up of the same process pool on a perfectly parallel job, right now on this machine:
    the most any parallel code can get from ``workers`` processes under the current load."""
    from incdet.models.proposals import run_pool

    out = {}
    for w in (1, workers, 1, workers):
        t0 = time.perf_counter()
        list(run_pool(_burn, [n] * jobs, w, progress=False, chunksize=1))
        out.setdefault(w, []).append(jobs / (time.perf_counter() - t0))
    one, many = max(out[1]), max(out[workers])
    return {"jobs_per_s_1": one, f"jobs_per_s_{workers}": many, "ideal_speedup_now": many / one}


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its reaped children (the pool's workers)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="trainval")
    p.add_argument("--images", type=int, default=30, help="first N images of the split (0: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-proposals", type=int, default=2000)
    p.add_argument("--max-side", type=int, default=500)
    p.add_argument("--json")
    a = p.parse_args(argv)
    items = voc_image_list(a.data, a.split)
    if a.images:
        items = items[: a.images]
    runs = []
    ref = None

    def run(workers: int, cache: bool) -> None:
        nonlocal ref
        with tempfile.TemporaryDirectory() as d:
            l0, c0, t0 = _load(), _cpu_seconds(), time.perf_counter()
            got = compute_for_images(items, "selective_search", a.max_proposals, a.max_side, workers,
                                     progress=False, cache_dir=Path(d) / "cache" if cache else None)
            dt = time.perf_counter() - t0
            cpu = _cpu_seconds() - c0
        if ref is None:
            ref = got
        same = list(got) == list(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)
        r = {"workers": workers, "cache": cache, "seconds": dt, "images_per_s": len(items) / dt,
             "load_before": l0, "load_after": _load(), "same_boxes": same,
             "cpu_seconds": cpu, "cpu_seconds_per_image": cpu / len(items), "cores_used": cpu / dt}
        runs.append(r)
        print(f"{workers} process(es){' + cache' if cache else ''}: {r['images_per_s']:.3f} img/s "
              f"({dt:.1f} s, {cpu / len(items):.2f} CPU s/img, {cpu / dt:.2f} cores busy), load {l0:.2f} -> {r['load_after']:.2f}, same boxes {same}", flush=True)

    cal = [calibrate(a.workers)]
    print(f"calibration (a perfectly parallel CPU job in the same pool): {cal[0]['ideal_speedup_now']:.2f}x "
          f"with {a.workers} processes", flush=True)
    for rep in range(a.repeats):
        for w in ((1, a.workers) if rep % 2 == 0 else (a.workers, 1)):
            run(w, False)
    run(a.workers, True)
    cal.append(calibrate(a.workers))
    print(f"calibration after: {cal[1]['ideal_speedup_now']:.2f}x", flush=True)
    one = statistics.median(r["images_per_s"] for r in runs if r["workers"] == 1)
    many = statistics.median(r["images_per_s"] for r in runs if r["workers"] == a.workers and not r["cache"])
    cached = [r["images_per_s"] for r in runs if r["cache"]][0]
    cores = {w: statistics.median(r["cores_used"] for r in runs if r["workers"] == w and not r["cache"])
             for w in (1, a.workers)}
    cpu_img = {w: statistics.median(r["cpu_seconds_per_image"] for r in runs if r["workers"] == w and not r["cache"])
               for w in (1, a.workers)}
    sizes = [Image.open(pth).size for _, pth in items]
    out = {"data": str(a.data), "split": a.split, "images": len(items), "max_side": a.max_side,
           "max_proposals": a.max_proposals, "image_sizes_wh": {"min": list(min(sizes)), "max": list(max(sizes))},
           "cpus": os.cpu_count(), "workers": a.workers, "repeats": a.repeats, "runs": runs,
           "one_process_images_per_s": one, "n_process_images_per_s": many, "with_cache_images_per_s": cached,
           "speedup": many / one, "calibration": cal, "cores_busy": cores, "cpu_seconds_per_image": cpu_img, "target_speedup": 1.8, "all_same_boxes": all(r["same_boxes"] for r in runs),
           "mean_load": statistics.mean(0.5 * (r["load_before"] + r["load_after"]) for r in runs),
           "mean_proposals_per_image": float(np.mean([len(v) for v in ref.values()]))}
    print(f"{len(items)} images: 1 process {one:.3f} img/s, {a.workers} processes {many:.3f} img/s = "
          f"{out['speedup']:.2f}x (target 1.8x), with the cache {cached:.3f} img/s; cores kept busy "
          f"{cores[1]:.2f} vs {cores[a.workers]:.2f}, CPU s/img {cpu_img[1]:.2f} vs {cpu_img[a.workers]:.2f}; same boxes "
          f"{out['all_same_boxes']}; mean load average {out['mean_load']:.2f} on {os.cpu_count()} CPUs")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
