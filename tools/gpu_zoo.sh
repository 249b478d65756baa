#!/usr/bin/env bash
# Train (or continue) the model zoo's pretrained backbones on ONE lent GPU, in one call of at most
# ~8 minutes, writing what comes back under $OUT:
#
#   OUT=/some/dir bash tools/gpu_zoo.sh            # on the GPU machine (the device tool sets OUT)
#
# Two runs share the GPU, each with half of the CPU cores rendering shapes-pretrain images
# (generation, not the GPU, is the bottleneck):
#   resnet18w16_shapes-pretrain   incdet's shapes trunk (ResNet-18 at 1/4 width), fp32
#   resnet18_shapes-pretrain      BlitzNet's ResNet-18 (torchvision layout), fp16 (23 MB: sent back in
#                                 two parts, $OUT/NAME.pt.part-aa/-ab; `cat` them together)
# A previous zoo version is continued (`--init zoo:NAME`) when zoo/manifest.json lists one, so GPU
# time accumulates across sessions. Each run writes $OUT/NAME.result.json (val top-1, wall time) and
# $OUT/zoo_add.sh holds the `incdet zoo add` lines (exact commands, hardware, wall time, metrics)
# to run here after copying the weights into zoo/:
#
#   cp $FILES/resnet18w16_shapes-pretrain.pt zoo/ && cat $FILES/resnet18_shapes-pretrain.pt.part-* \
#       > zoo/resnet18_shapes-pretrain.pt && bash $FILES/zoo_add.sh
#
# Knobs (environment): ITERS_W16, ITERS_W64, BATCH, SIZE, DEVICE (default cuda), LIMIT_S (per run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that comes back}
DEVICE=${DEVICE:-cuda}
ITERS_W16=${ITERS_W16:-5000}
ITERS_W64=${ITERS_W64:-4000}
BATCH=${BATCH:-128}
SIZE=${SIZE:-64}
LIMIT_S=${LIMIT_S:-450}
NCPU=$(nproc)
WORKERS=$(( NCPU / 2 > 1 ? NCPU / 2 - 1 : 1 ))
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
mkdir -p "$OUT"
HW=$(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo unknown)
echo "# run here, from the repository root, after copying the weights into zoo/" > "$OUT/zoo_add.sh"

train() {  # NAME WIDTH ITERS HALF(0|1)
    local name=$1 width=$2 iters=$3 half=$4 init="" flags=""
    if python -c "import sys; from incdet import zoo; sys.exit(0 if '$name' in zoo.read_manifest() else 1)" 2>/dev/null; then
        init="--init zoo:$name"
    fi
    [ "$half" = 1 ] && flags="--half"
    local cmd="incdet pretrain --run-dir runs/pretrain_$name --out zoo/$name.pt --width $width --size $SIZE \
--iterations $iters --batch-size $BATCH --lr 0.1 --warmup-iters 200 --eval-every 1000 --checkpoint-every 500 \
--val-images 3000 --num-workers $WORKERS --device $DEVICE $init $flags"
    local t0=$SECONDS
    timeout "$LIMIT_S" python -m incdet pretrain --run-dir "$OUT/run_$name" --out "$OUT/$name.pt" --width "$width" \
        --size "$SIZE" --iterations "$iters" --batch-size "$BATCH" --lr 0.1 --warmup-iters 200 --eval-every 1000 \
        --checkpoint-every 500 --val-images 3000 --num-workers "$WORKERS" --device "$DEVICE" $init $flags \
        > "$OUT/$name.log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ] || [ ! -f "$OUT/$name.pt" ]; then
        echo "$name: FAILED (rc $rc, $((SECONDS - t0)) s); see $name.log" | tee -a "$OUT/summary.txt"
        return
    fi
    cp "$OUT/run_$name/result.json" "$OUT/$name.result.json"
    local top1 prev
    top1=$(python -c "import json; print(round(json.load(open('$OUT/$name.result.json'))['metrics']['top1'], 2))")
    prev=$(python -c "import json; print(json.load(open('$OUT/$name.result.json'))['metrics']['init_sha256'] or '')")
    echo "incdet zoo add $name zoo/$name.pt --command \"$cmd\" --hardware \"$HW ($NCPU CPU cores)\" \
--wall-s $((SECONDS - t0)) --metric top1=$top1 --metric iterations=$iters ${prev:+--continued-from $prev}" >> "$OUT/zoo_add.sh"
    echo "$name: val top-1 $top1 % after $iters iterations, $((SECONDS - t0)) s on $HW" | tee -a "$OUT/summary.txt"
    if [ "$(stat -c %s "$OUT/$name.pt")" -gt $((15 * 1024 * 1024)) ]; then
        split -b 15M "$OUT/$name.pt" "$OUT/$name.pt.part-" && rm "$OUT/$name.pt"
    fi
    rm -rf "$OUT/run_$name"   # checkpoints are too big to come back
}

train resnet18w16_shapes-pretrain 16 "$ITERS_W16" 0 &
train resnet18_shapes-pretrain 64 "$ITERS_W64" 1 &
wait

