#!/usr/bin/env bash
# Train (or continue) the model zoo's pretrained backbones and source codecs on ONE lent GPU, in
# one call of at most ~8.5 minutes, writing what comes back under $OUT:
#
#   OUT=/some/dir bash tools/gpu_zoo.sh            # on the GPU machine (the device tool sets OUT)
#
# PARTS (default "detector codec") picks what runs; both parts run side by side on the GPU.
#
# detector: two runs, each with a quarter of the CPU cores rendering shapes-pretrain images
# (half of them when the codec part is off):
#   resnet18w16_shapes-pretrain   incdet's shapes trunk (ResNet-18 at 1/4 width), fp32
#   resnet18_shapes-pretrain      BlitzNet's ResNet-18 (torchvision layout), fp16 (23 MB)
#
# codec: the source codecs of CODEC_MODELS (default: the factorized prior at q1..q4), all at once,
# each `codec train configs/codec/zoo/<arch>.yaml` (domain `photos`, crop CODEC_CROP, batch
# CODEC_BATCH, adam CODEC_LR, grad clip 1) stopped by `timeout CODEC_TRAIN_S` and exported from its
# last checkpoint (`python -m codec.export export ... --half`). Each continues its zoo entry
# (`learner.source_checkpoint=zoo:NAME`) when zoo/manifest.json lists one, else the q3 entry of
# the same architecture (a fine-tune to another rate), else starts from scratch. Names:
# codec_<config stem>_q<1..5> (compressai's lambdas 0.0018 0.0035 0.0067 0.0130 0.0250).
# The training photos: CODEC_DATA (default: gpu_data/ in the repository when present, else
# ../shared/data). ../shared does not travel to the GPU machine and the working tree that does is
# limited (64 MiB with what `carry` names), so pack a subset first, here:
#
#   bash tools/gpu_zoo.sh pack-codec-data gpu_data 40     # <= 40 MiB of the `photos` domain
#   echo /gpu_data/ >> .git/info/exclude                 # then: run(..., carry=["gpu_data"])
#
# Kodak is not needed on the GPU (bpp / PSNR / BD-rate are measured here by zoo_add.sh; when the
# data root has kodak/ the run's own end-of-task evaluation is kept).
#
# What comes back (at most 8 files, 16 MiB each, 64 MiB together): the weight files (split in
# 15 MiB parts when larger) and one zoo_meta.tar.gz with the logs, result files, summary.txt and
# zoo_add.sh: the `incdet zoo add` lines (exact commands, hardware, wall time, metrics; the codec
# metrics - Kodak bpp, PSNR, BD-rate vs JPEG2000 of the architecture's set in zoo/ - are measured
# by zoo_add.sh itself, here) to run from the repository root:
#
#   mkdir -p /tmp/zoo_meta && tar xzf $FILES/zoo_meta.tar.gz -C /tmp/zoo_meta && cp $FILES/*.pt zoo/ \
#     && cat $FILES/resnet18_shapes-pretrain.pt.part-* > zoo/resnet18_shapes-pretrain.pt \
#     && bash /tmp/zoo_meta/zoo_add.sh
#
# Sizes: a float16 mean-scale hyperprior (N=128, M=192) is 14.4 MiB, a factorized one ~6 MiB: four
# mean-scale rate points (58 MiB) fill one call by themselves (PARTS=codec
# CODEC_MODELS="codec_mbt2018-mean_q1 ..."), and a continued zoo file travels there too.
#
# Knobs (environment): ITERS_W16, ITERS_W64, BATCH, SIZE, SEED (2: new shapes-pretrain images), DEVICE (default cuda), LIMIT_S (per
# detector run), PARTS, CODEC_MODELS, CODEC_TRAIN_S (default 330), CODEC_CROP (256), CODEC_BATCH
# (8), CODEC_LR (5e-4: continuing the CPU q3 base 1,500 steps, 5e-4 gave 0.403 bpp / 27.36 dB on
# Kodak against 0.481 / 27.29 at compressai's 1e-4, docs/results/zoo.md), CODEC_CKPT (checkpoint every, 200), CODEC_DATA, WORK (run folders, default /tmp/gpu_zoo).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "pack-codec-data" ]; then  # pack-codec-data DEST [MAX_MIB]: a subset of `photos`
    dest=${2:?usage: tools/gpu_zoo.sh pack-codec-data DEST [MAX_MIB]}
    python - "$dest" "${3:-40}" <<'PY'
import random, shutil, sys
from pathlib import Path
from codec.data import default_data_root, photo_files
dest, budget = Path(sys.argv[1]), float(sys.argv[2]) * 2**20
root = default_data_root()
files = photo_files(root)
random.Random(0).shuffle(files)  # a spread of every source, not the first folders only
used = n = 0
for f in files:
    size = f.stat().st_size
    if used + size > budget:
        continue
    out = dest / f.relative_to(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(f, out)
    used += size
    n += 1
print(f"{dest}: {n} of {len(files)} photos, {used / 2**20:.1f} MiB")
PY
    exit $?
fi

OUT=${OUT:?set OUT to the folder that comes back}
PARTS=${PARTS:-detector codec}
DEVICE=${DEVICE:-cuda}
ITERS_W16=${ITERS_W16:-5000}
ITERS_W64=${ITERS_W64:-4000}
BATCH=${BATCH:-128}
SIZE=${SIZE:-64}
SEED=${SEED:-2}   # shapes-pretrain streams: v1 of resnet18w16 used seed 0, v2 seed 1; a continuation sees new images
LIMIT_S=${LIMIT_S:-450}
NCPU=$(nproc)
case " $PARTS " in *" codec "*) SHARE=4 ;; *) SHARE=2 ;; esac   # detector runs: 1/4 or 1/2 of the cores each
WORKERS=$(( NCPU / SHARE > 1 ? NCPU / SHARE - 1 : 1 ))
WORK=${WORK:-/tmp/gpu_zoo}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
mkdir -p "$OUT"
HW=$(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo unknown)
mkdir -p "$WORK/meta"
ZOO_ADD=$WORK/meta/zoo_add.sh
echo "# run here, from the repository root, after copying the weights into zoo/" > "$ZOO_ADD"

train() {  # NAME WIDTH ITERS HALF(0|1)
    local name=$1 width=$2 iters=$3 half=$4 init="" flags=""
    if python -c "import sys; from incdet import zoo; sys.exit(0 if '$name' in zoo.read_manifest() else 1)" 2>/dev/null; then
        init="--init zoo:$name"
    fi
    [ "$half" = 1 ] && flags="--half"
    local cmd="incdet pretrain --run-dir runs/pretrain_$name --out zoo/$name.pt --width $width --size $SIZE \
--iterations $iters --batch-size $BATCH --lr 0.1 --warmup-iters 200 --eval-every 1000 --checkpoint-every 500 \
--val-images 3000 --seed $SEED --num-workers $WORKERS --device $DEVICE $init $flags"
    local t0=$SECONDS
    timeout "$LIMIT_S" python -m incdet pretrain --run-dir "$WORK/run_$name" --out "$OUT/$name.pt" --width "$width" \
        --size "$SIZE" --iterations "$iters" --batch-size "$BATCH" --lr 0.1 --warmup-iters 200 --eval-every 1000 \
        --checkpoint-every 500 --val-images 3000 --seed "$SEED" --num-workers "$WORKERS" --device "$DEVICE" $init $flags \
        > "$WORK/meta/$name.log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ] || [ ! -f "$OUT/$name.pt" ]; then
        echo "$name: FAILED (rc $rc, $((SECONDS - t0)) s); see $name.log in zoo_meta.tar.gz" | tee -a "$WORK/meta/summary.txt"
        return
    fi
    cp "$WORK/run_$name/result.json" "$WORK/meta/$name.result.json"
    local top1 prev
    top1=$(python -c "import json; print(round(json.load(open('$WORK/meta/$name.result.json'))['metrics']['top1'], 2))")
    prev=$(python -c "import json; print(json.load(open('$WORK/meta/$name.result.json'))['metrics']['init_sha256'] or '')")
    echo "incdet zoo add $name zoo/$name.pt --command \"$cmd\" --hardware \"$HW ($NCPU CPU cores)\" \
--wall-s $((SECONDS - t0)) --metric top1=$top1 --metric iterations=$iters ${prev:+--continued-from $prev}" >> "$ZOO_ADD"
    echo "$name: val top-1 $top1 % after $iters iterations, $((SECONDS - t0)) s on $HW" | tee -a "$WORK/meta/summary.txt"
    if [ "$(stat -c %s "$OUT/$name.pt")" -gt $((15 * 1024 * 1024)) ]; then
        split -b 15M "$OUT/$name.pt" "$OUT/$name.pt.part-" && rm "$OUT/$name.pt"
    fi
    rm -rf "$WORK/run_$name"   # checkpoints are too big to come back
}


# ------------------------------------------------------------------------------ source codecs
CODEC_MODELS=${CODEC_MODELS:-codec_bmshj2018-factorized_q1 codec_bmshj2018-factorized_q2 codec_bmshj2018-factorized_q3 codec_bmshj2018-factorized_q4}
CODEC_TRAIN_S=${CODEC_TRAIN_S:-330}
CODEC_CROP=${CODEC_CROP:-256}
CODEC_BATCH=${CODEC_BATCH:-8}
CODEC_LR=${CODEC_LR:-5e-4}
CODEC_CKPT=${CODEC_CKPT:-200}
CODEC_ITERS=${CODEC_ITERS:-1000000}   # the time limit stops the run; its last checkpoint is exported
if [ -z "${CODEC_DATA:-}" ]; then
    if [ -d gpu_data ]; then CODEC_DATA=gpu_data; else CODEC_DATA=../shared/data; fi
fi
n_codec=$(echo $CODEC_MODELS | wc -w)
CODEC_WORKERS=$(( n_codec > 0 && NCPU / 2 / n_codec > 1 ? NCPU / 2 / n_codec - 1 : 1 ))

codec_lmbda() { case $1 in 1) echo 0.0018 ;; 2) echo 0.0035 ;; 3) echo 0.0067 ;; 4) echo 0.0130 ;; 5) echo 0.0250 ;; *) return 1 ;; esac; }

zoo_field() {  # NAME sha256|steps_total -> the manifest's value, or nothing when NAME is not listed
    python - "$1" "$2" <<'PY' 2>/dev/null
import sys
from incdet import zoo
e = zoo.read_manifest().get(sys.argv[1])
if e is not None:
    print(e.sha256 if sys.argv[2] == "sha256" else int(e.metrics.get("steps_total", e.metrics.get("steps", 0))))
PY
}

codec_train() {  # NAME = codec_<config stem>_q<k>
    local name=$1 stem q lmbda init="" prev="" prev_total=0 from="scratch" t0=$SECONDS
    stem=${name#codec_}; q=${stem##*_q}; stem=${stem%_q*}
    if ! lmbda=$(codec_lmbda "$q") || [ ! -f "configs/codec/zoo/$stem.yaml" ]; then
        echo "$name: FAILED: not codec_<stem>_q<1..5> with configs/codec/zoo/<stem>.yaml" | tee -a "$WORK/meta/summary.txt"
        return
    fi
    for cand in "$name" "codec_${stem}_q3"; do
        prev=$(zoo_field "$cand" sha256)
        if [ -n "$prev" ]; then
            init=zoo:$cand; from="zoo:$cand"; prev_total=$(zoo_field "$cand" steps_total); break
        fi
    done
    local sets="--set experiment.name=$name --set learner.lmbda=$lmbda --set tasks.crop=$CODEC_CROP"
    sets="$sets --set train.lr=$CODEC_LR --set train.batch_size=$CODEC_BATCH --set train.num_workers=$CODEC_WORKERS"
    sets="$sets --set train.iterations=$CODEC_ITERS --set train.checkpoint_every=$CODEC_CKPT --set tasks.data_root=$CODEC_DATA"
    [ -d "$CODEC_DATA/kodak" ] || sets="$sets --set tasks.eval_sets={}"
    [ -n "$init" ] && sets="$sets --set learner.source_checkpoint=$init"
    local run=$WORK/run_$name
    rm -rf "$run"
    # shellcheck disable=SC2086
    timeout "$CODEC_TRAIN_S" python -m codec.cli train "configs/codec/zoo/$stem.yaml" --out "$run" --device "$DEVICE" \
        $sets > "$WORK/meta/$name.log" 2>&1
    local rc=$?
    local ck=$run/checkpoints/task0.pt
    [ -f "$ck" ] || ck=$run/checkpoint.pt
    if [ ! -f "$ck" ] || ! python -m codec.export export "$ck" -o "$OUT/$name.pt" --half >> "$WORK/meta/$name.log" 2>&1; then
        echo "$name: FAILED (train rc $rc, nothing to export after $((SECONDS - t0)) s); see $name.log" | tee -a "$WORK/meta/summary.txt"
        rm -rf "$run"
        return
    fi
    local steps wall=$((SECONDS - t0))
    steps=$(python -c "import torch; print(torch.load('$OUT/$name.pt', weights_only=True)['exported_from']['step'])")
    local cmd="timeout $CODEC_TRAIN_S codec train configs/codec/zoo/$stem.yaml --out runs/zoo_codec/$name --device $DEVICE $sets; python -m codec.export export runs/zoo_codec/$name/checkpoint.pt -o zoo/$name.pt --half"
    echo "incdet zoo add $name zoo/$name.pt --command \"$cmd\" --hardware \"$HW ($NCPU CPU cores)\" --wall-s $wall \
--metric steps=$steps --metric steps_total=$((prev_total + steps)) \$(codec_metrics $name) ${prev:+--continued-from $prev} \
--notes \"$steps steps (crop $CODEC_CROP, batch $CODEC_BATCH, lambda $lmbda) from $from, stopped by the ${CODEC_TRAIN_S} s limit; float16 transforms\"" \
        > "$WORK/zoo_add_$name.sh"
    echo "$name: $steps steps in $wall s from $from (train rc $rc; 124 = stopped by the time limit, as planned)" | tee -a "$WORK/meta/summary.txt"
    rm -rf "$run"   # checkpoints are too big to come back
}

case " $PARTS " in *" detector "*)
    train resnet18w16_shapes-pretrain 16 "$ITERS_W16" 0 &
    train resnet18_shapes-pretrain 64 "$ITERS_W64" 1 & ;;
esac
case " $PARTS " in *" codec "*)
    for name in $CODEC_MODELS; do codec_train "$name" & done ;;
esac
wait

if ls "$WORK"/zoo_add_codec_*.sh > /dev/null 2>&1; then
    cat >> "$ZOO_ADD" <<'SH'
# source codecs: Kodak bpp / PSNR of each file (real bitstreams) and the PSNR BD-rate vs JPEG2000
# of its architecture's rate points now in zoo/ (python -m codec.export bd)
BD_DIR=$(mktemp -d)
codec_metrics() {  # NAME -> --metric arguments
    local stem=${1#codec_}; stem=${stem%_q*}
    local js=$BD_DIR/$stem.json
    [ -f "$js" ] || python -m codec.export bd $(ls zoo/codec_${stem}_q?.pt) --images kodak --json "$js" >&2 || return 0
    python - "$js" "zoo/$1.pt" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1]))
p = r["points"][sys.argv[2]]
out = [f"--metric kodak_bpp={p['bpp']:.4f}", f"--metric kodak_psnr={p['psnr']:.3f}"]
if math.isfinite(r["bd_rate_vs_jpeg2000"]):
    out.append(f"--metric kodak_bd_rate_vs_jpeg2000_set={r['bd_rate_vs_jpeg2000']:.1f}")
print(" ".join(out))
PY
}
SH
    cat "$WORK"/zoo_add_codec_*.sh >> "$ZOO_ADD"
fi
tar czf "$OUT/zoo_meta.tar.gz" -C "$WORK/meta" .
cat "$WORK/meta/summary.txt" "$ZOO_ADD" 2>/dev/null
n_out=$(find "$OUT" -type f | wc -l)
mib_out=$(( $(du -sb "$OUT" | cut -f1) / 1048576 ))
echo "\$OUT: $n_out files, $mib_out MiB (what comes back: at most 8 files, 64 MiB)"
