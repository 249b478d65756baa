#!/usr/bin/env bash
# The incdet and BlitzNet experiment sets of docs/results/{incdet,blitznet}.md on ONE GPU machine,
# many runs at once (each run is small and mostly bound by Python / data loading, so ~10 runs share
# one GPU well). A variant that re-uses an A starts as soon as that A is written.
#
#   bash tools/gpu_experiments.sh [OUT=runs] [DEADLINE_S=0 (none)]
#
# then, on any machine:
#   python tools/incdet_experiments.py table --out OUT/incdet_exp [--notes NOTES.md]
#   python tools/incdet_experiments.py table --page 6k --out OUT/incdet_exp [--notes NOTES.md]
#   python tools/blitznet_experiments.py table --out OUT/blitznet_exp --profile gpu [--notes NOTES.md]
#
# Needs data/shapes-voc with its selective-search proposals already computed
# (data/shapes-voc/proposals_selective_search.npz, e.g. by `incdet demo` or `incdet proposals`), so
# that the GPU machine does not need opencv-contrib. Runs that are not finished by the deadline are
# killed; running the script again continues them (both tools resume from checkpoints).
set -u
OUT=${1:-runs}
DEADLINE=${2:-0}
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs"
DEVICE=${DEVICE:-cuda}
I="python tools/incdet_experiments.py run --out $OUT/incdet_exp --device $DEVICE --threads 1 --only"
B="python tools/blitznet_experiments.py run --out $OUT/blitznet_exp --profile gpu --device $DEVICE --threads 1 --only"
L="$OUT/logs"

( $I 15+5_distill && {
    $I 15+5_naive 15+5_unbiased 15+5_nobox >"$L/i155a.log" 2>&1 &
    $I 15+5_ewc 15+5_lambda10 15+5_bnfrozen >"$L/i155b.log" 2>&1 &
    $I 15+1x5_distill 15+1x5_lambda10 >"$L/i15x5a.log" 2>&1 &
    $I 15+1x5_naive 15+1x5_unbiased 15+1x5_ce >"$L/i15x5b.log" 2>&1 &
    wait; } ) >"$L/i155.log" 2>&1 &
for k in 1 2; do  # the repeatability seeds of the key rows
    ( $I 15+5_distill_s$k && $I 15+5_naive_s$k 15+1x5_distill_s$k ) >"$L/iseed$k.log" 2>&1 &
    $I joint_s$k 10+10_distill_s$k >"$L/iseedb$k.log" 2>&1 &
done
( $I 19+1_distill && {
    $I 19+1_naive 19+1_frozen_trunk 19+1_all_frozen >"$L/i191a.log" 2>&1 &
    $I 19+1_frozen_trunk_distill 19+1_ce 19+1_nobox >"$L/i191b.log" 2>&1 &
    wait; } ) >"$L/i191.log" 2>&1 &
for k in 0 1 2; do  # the configs' schedule (A 6000 iterations): docs/results/incdet_6k.md
    ( $I 6k_15+5_distill_s$k && $I 6k_15+5_naive_s$k 6k_15+1x5_distill_s$k ) >"$L/i6k$k.log" 2>&1 &
    $I 6k_joint_s$k 6k_10+10_distill_s$k >"$L/i6kb$k.log" 2>&1 &
done
( while [ ! -f "$OUT/incdet_exp/6k_15+5_distill_s0/checkpoints/task0.pt" ]; do sleep 20; done
  $I 6k_15+5_b2000_distill_s0 6k_15+5_b2000_naive_s0 6k_15+1x5_sgd1e-2_s0 6k_15+1x5_bnfrozen_s0 6k_15+1x5_bglo01_s0
) >"$L/i6kprobes.log" 2>&1 &
( while [ ! -f "$OUT/incdet_exp/6k_15+5_distill_s0/checkpoints/task0.pt" ]; do sleep 20; done
  $I 6k_15+1x5_lambda10_s0 6k_15+1x5_pool32_s0 6k_15+1x5_unbiasedbg_s0 6k_15+1x5_unbiasedbg_pool32_s0 6k_15+5_unbiasedbg_s0 6k_15+5_b2000_unbiasedbg_s0
  $I 6k_15+1x5_unbiasedbg_pool32_b600_s0
) >"$L/i6kprobes2.log" 2>&1 &
for k in 1 2; do  # beyond the thesis: the unbiased background loss on each seed's A
  ( while [ ! -f "$OUT/incdet_exp/6k_15+5_distill_s$k/checkpoints/task0.pt" ]; do sleep 20; done
    $I 6k_15+1x5_unbiasedbg_pool32_s$k 6k_15+5_unbiasedbg_s$k ) >"$L/i6kremedy$k.log" 2>&1 &
done
( while [ ! -f "$OUT/incdet_exp/6k_10+10_distill_s0/checkpoints/task0.pt" ]; do sleep 20; done
  $I 6k_10+10_unbiasedbg_s0 6k_10+10_b2000_unbiasedbg_s0 ) >"$L/i6kremedy1010.log" 2>&1 &
$I joint_6k >"$L/ijoint6k.log" 2>&1 &
( $I 15+5_long_distill && $I 15+5_long_naive ) >"$L/i155long.log" 2>&1 &
$I joint_lr4e-3 >"$L/ijointlr.log" 2>&1 &
( $I 10+10_distill && {
    $I 10+10_naive 10+10_unbiased >"$L/i1010a.log" 2>&1 &
    $I 10+10_nobox 10+10_ewc 10+10_ce >"$L/i1010b.log" 2>&1 &
    wait; } ) >"$L/i1010.log" 2>&1 &
$I joint >"$L/ijoint.log" 2>&1 &
( $B inc15+5_distill && {
    $B inc15+5_naive >"$L/binca.log" 2>&1 &
    $B inc15+5_distill_w10 >"$L/bincb.log" 2>&1 &
    wait; } ) >"$L/binc.log" 2>&1 &
for n in joint det_only seg_only fusion_plain fusion_hourglass fusion_resskip_proj \
         joint_seed1 det_only_seed1 seg_only_seed1 joint_seed2 det_only_seed2 seg_only_seed2; do
    $B $n >"$L/b_$n.log" 2>&1 &
done

if [ "$DEADLINE" -gt 0 ]; then
    ( sleep "$DEADLINE"; echo "deadline ${DEADLINE}s reached: stopping unfinished runs" >>"$L/deadline.log";
      pkill -f "tools/(incdet|blitznet)_experiments.py run" ) &
    KILLER=$!
fi
wait $(jobs -p | grep -v "^${KILLER:-x}$") 2>/dev/null
[ -n "${KILLER:-}" ] && kill "$KILLER" 2>/dev/null
echo "gpu_experiments: done"
