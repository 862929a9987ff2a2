#!/bin/sh
# device-check.sh LOGDIR — what a lent GPU machine runs, in one call (../shared/DEVICE.md): the
# CUDA backend's op checks against the CPU backend (build/cuda-tests/check_*, both precisions),
# built on the CPU machine and carried along with the build folder. Full logs go to LOGDIR; a short
# table is printed last. Run from the repository root:
#   run: sh tests/cuda/device-check.sh "$OUT"      (carry: build)
# Exit status 0 when every check passed.
set -u
logs=${1:?usage: device-check.sh LOGDIR}
build=${BUILD:-build}
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

echo "== failures and largest errors =="
grep -h -E '^(FAIL|# )' "$logs"/check_*.log | head -n 80
echo "== machine =="
sed -n 2,3p "$logs/machine.txt"
echo "== op checks, GPU against CPU (float32 <= 1e-4, bf16 <= 2e-2) =="
printf '%s' "$summary"
exit $status
