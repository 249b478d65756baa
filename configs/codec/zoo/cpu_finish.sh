#!/usr/bin/env bash
# Put the four CPU runs of one architecture into the zoo once cpu_chain.sh has finished them:
#   configs/codec/zoo/cpu_finish.sh mbt2018-mean 6000 800     (ARCH BASE_ITERS FT_ITERS, as given to cpu_chain.sh)
# exports each run's task-end checkpoint (float16 transforms, refused if Kodak PSNR/bpp move),
# measures the set on Kodak (bpp, PSNR, BD-rate vs JPEG2000), and records each file with
# `incdet zoo add` (exact commands, hardware, wall time, metrics).
set -eu
cd "$(dirname "$0")/../../.."
stem=$1; base_iters=$2; ft_iters=$3
Z=${INCDET_ZOO:-zoo}; R=${RUNS:-runs/zoo_codec}   # (other folders: for a dry run)
export OMP_NUM_THREADS=1
hw="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), 2 cores shared with other jobs, one torch thread per run"
files=()
for q in 1 2 3 4; do
  ck=$R/${stem}_q$q/checkpoints/task0.pt
  [ -f "$ck" ] || { echo "$ck missing: that run has not finished (see runs/zoo_codec/chain_$stem.log)"; exit 1; }
  python -m codec.export export "$ck" -o "$Z/codec_${stem}_q$q.pt" --half --check kodak
  files+=("$Z/codec_${stem}_q$q.pt")
done
python -m codec.export bd "${files[@]}" --images kodak --json "$R/bd_$stem.json"
wall() {  # RUN_DIR -> seconds from its first step to its task-end checkpoint
  python - "$1" <<'PY'
import json, os, sys
d = sys.argv[1]
recs = [json.loads(l) for l in open(f"{d}/metrics.jsonl") if '"step"' in l]
a, b = recs[0], recs[min(1, len(recs) - 1)]
per_step = (b["time"] - a["time"]) / (b["step"] - a["step"]) if b["step"] > a["step"] else 0.0
start = a["time"] - a["step"] * per_step
print(int(os.path.getmtime(f"{d}/checkpoints/task0.pt") - start))
PY
}
base_cmd="codec train configs/codec/zoo/$stem.yaml --out runs/zoo_codec/${stem}_q3 --device cpu --set tasks.crop=128 --set train.iterations=$base_iters --set \"train.lr_steps=[$((base_iters * 9 / 10))]\" --set train.lr_gamma=0.3"
base_wall=$(wall "$R/${stem}_q3")
for q in 1 2 3 4; do
  m=$(python - "$R/bd_$stem.json" "$Z/codec_${stem}_q$q.pt" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1])); p = r["points"][sys.argv[2]]
out = [f"--metric kodak_bpp={p['bpp']:.4f}", f"--metric kodak_psnr={p['psnr']:.3f}",
       f"--metric kodak_jpeg2000_psnr_at_bpp={p['jpeg2000_psnr_at_bpp']:.3f}"]
if math.isfinite(r["bd_rate_vs_jpeg2000"]):
    out.append(f"--metric kodak_bd_rate_vs_jpeg2000_set={r['bd_rate_vs_jpeg2000']:.1f}")
print(" ".join(out))
PY
)
  exp="python -m codec.export export runs/zoo_codec/${stem}_q$q/checkpoints/task0.pt -o zoo/codec_${stem}_q$q.pt --half --check kodak"
  if [ $q = 3 ]; then
    cmd="$base_cmd && $exp"; w=$base_wall; steps=$base_iters; note="base at q3 from scratch"
  else
    l=$(python -c "import yaml; print(yaml.safe_load(open('$R/${stem}_q$q/config.yaml'))['learner']['lmbda'])")
    cmd="$base_cmd && codec train configs/codec/zoo/$stem.yaml --out runs/zoo_codec/${stem}_q$q --device cpu --set tasks.crop=128 --set experiment.name=codec_${stem}_q$q --set learner.lmbda=$l --set learner.source_checkpoint=runs/zoo_codec/${stem}_q3/checkpoints/task0.pt --set train.iterations=$ft_iters --set \"train.lr_steps=[$((ft_iters * 3 / 4))]\" --set train.lr_gamma=0.3 && $exp"
    w=$((base_wall + $(wall "$R/${stem}_q$q"))); steps=$((base_iters + ft_iters)); note="q3 base ($base_iters steps) fine-tuned $ft_iters steps to lambda $l"
  fi
  # shellcheck disable=SC2086
  incdet zoo add "codec_${stem}_q$q" "$Z/codec_${stem}_q$q.pt" --command "$cmd" --hardware "$hw" --wall-s "$w" \
      --metric steps_total=$steps $m --notes "$note; batch 8, crop 128, adam 1e-4, grad clip 1; float16 transforms (entropy models float32), checked on Kodak against float32"
done
incdet zoo list
