#!/bin/sh
# device-check.sh LOGDIR — what a lent GPU machine runs, in one call (../shared/DEVICE.md), from the
# build made on the CPU machine and carried along (build/, with build/peers/ holding the PyTorch
# peer). Full logs go to LOGDIR; a short table is printed last. From the repository root:
#   run: sh tests/cuda/device-check.sh "$OUT"            (carry: build)
#   BENCH=0 skips the benchmark; STEPS=N sets its timed steps (default 20).
# 1. make check-cuda's programs: every op, the ResNet and the MoCo step against the CPU backend, in
#    float32 (TF32 off, <= 1e-4) and bf16 (<= 2e-2 per op).
# 2. the issue's benchmark: ResNet-50, 224 px, batch 256, K 65536, the MoCo v2 step and SGD, ours
#    (bf16, then float32) beside ../shared/peers/moco_torch.py --amp bf16 --channels-last, with
#    and without 8 key-BN groups, in the same call; pairs/s, peak GPU memory, and the share of the
#    card's dense bf16 rate (989 TFLOP/s on H100/H200 SXM) the step reaches, counting 4 ResNet-50
#    forwards per pair (query forward and backward = 3, key forward = 1) at 4.09 GMAC each.
# Exit status 0 when every check passed.
set -u
logs=${1:?usage: device-check.sh LOGDIR}
build=${BUILD:-build}
steps=${STEPS:-20}
mkdir -p "$logs"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    nproc
} >"$logs/machine.txt"

status=0
summary=""
for t in "$build"/cuda-tests/check_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    start=$(date +%s)
    timeout 300 "$t" >"$logs/$name.log" 2>&1
    rc=$?
    passed=$(grep -c '^PASS ' "$logs/$name.log")
    failed=$(grep -c '^FAIL ' "$logs/$name.log")
    [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1 # died without saying why
    [ "$failed" -ne 0 ] && status=1
    summary="$summary$(printf '%-16s %4d passed %4d failed  exit %3d  %4ds' "$name" "$passed" "$failed" "$rc" $(($(date +%s) - start)))
"
done
[ -n "$summary" ] || { echo "device-check: no checks under $build/cuda-tests (build with CUDA here first)"; exit 1; }

bench=""
if [ "${BENCH:-1}" != 0 ]; then
    R50="--arch resnet50 --size 224 --batch 256 --K 65536"
    field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^,\"}]*\).*/\1/p" "$2" | tail -n 1; }
    row() { # label log
        pps=$(field pairs_per_s "$2")
        mem=$(field peak_gpu_gib "$2")
        [ -n "$mem" ] || mem=$(field peak_mem_gib "$2")
        share=$(awk -v p="${pps:-0}" 'BEGIN { printf "%.1f%%", 100 * p * 4 * 2 * 4.09e9 / 989e12 }')
        bench="$bench$(printf '%-44s %10s %8s GiB %8s' "$1" "${pps:--}" "${mem:--}" "$share")
"
    }
    for groups in 1 8; do
        timeout 300 "$build/bench/moco_step_bench" --device cuda --precision bf16 $R50 --bn-groups $groups \
            --warmup 5 --steps "$steps" >"$logs/ours-bf16-g$groups.json" 2>&1
        row "ours, bf16, $groups key-BN group(s)" "$logs/ours-bf16-g$groups.json"
        timeout 300 python3 "$build/peers/moco_torch.py" --device cuda $R50 --amp bf16 --channels-last \
            --bn-groups $groups --warmup 5 --steps "$steps" >"$logs/peer-bf16-g$groups.json" 2>&1
        row "PyTorch peer, bf16 channels-last, $groups group(s)" "$logs/peer-bf16-g$groups.json"
    done
    timeout 300 "$build/bench/moco_step_bench" --device cuda --precision f32 $R50 --warmup 3 --steps "$steps" \
        >"$logs/ours-f32.json" 2>&1
    row "ours, float32 (TF32 off)" "$logs/ours-f32.json"
fi

echo "== failures and largest errors =="
grep -h -E '^(FAIL|# )' "$logs"/check_*.log | head -n 80
echo "== machine =="
sed -n 2,3p "$logs/machine.txt"
echo "== op checks, GPU against CPU (float32 <= 1e-4, bf16 <= 2e-2) =="
printf '%s' "$summary"
if [ -n "$bench" ]; then
    echo "== MoCo v2 step, ResNet-50 224 px, batch 256, K 65536 (pairs/s, peak memory, share of bf16 peak) =="
    printf '%s' "$bench"
fi
exit $status
