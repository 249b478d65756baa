#!/usr/bin/env bash
# CPU zoo chain for one architecture: base at q3, then fine-tunes of copies of it to q1, q2, q4.
# usage: configs/codec/zoo/cpu_chain.sh ARCH_CONFIG_STEM BASE_ITERS FT_ITERS   (e.g. mbt2018-mean 9000 800)
# Each `codec train` that stops in the evaluation (e.g. the hyperprior bitstream missing when the
# process started) is resumed once with a fresh process: training is saved before the evaluation.
set -u
cd "$(dirname "$0")/../../.."
stem=$1; base_iters=$2; ft_iters=$3
export OMP_NUM_THREADS=1
cfg=configs/codec/zoo/$stem.yaml
run() {  # run RUN_DIR --set ...
  local dir=$1; shift
  if [ -f "$dir/checkpoints/task0.pt" ]; then echo "$(date -u) $dir done already"; return 0; fi
  if [ -f "$dir/config.yaml" ]; then   # resumed with the same overrides (e.g. a changed iteration count)
    codec train --resume "$dir" --device cpu --set tasks.crop=128 "$@" || codec train --resume "$dir"
  else
    codec train "$cfg" --out "$dir" --device cpu --set tasks.crop=128 "$@" || codec train --resume "$dir"
  fi
}
base=runs/zoo_codec/${stem}_q3
echo "$(date -u) base $base"
run $base --set train.iterations=$base_iters --set "train.lr_steps=[$((base_iters * 9 / 10))]" --set train.lr_gamma=0.3
src=$base/checkpoints/task0.pt; [ -f "$src" ] || src=$base/checkpoint.pt
for q in 1:0.0018 2:0.0035 4:0.0130; do
  echo "$(date -u) fine-tune q${q%%:*} from $src"
  run runs/zoo_codec/${stem}_q${q%%:*} --set experiment.name=codec_${stem}_q${q%%:*} --set learner.lmbda=${q#*:} \
      --set learner.source_checkpoint=$src --set train.iterations=$ft_iters \
      --set "train.lr_steps=[$((ft_iters * 3 / 4))]" --set train.lr_gamma=0.3
done
echo "$(date -u) chain done"
