#!/bin/sh
# run.sh BUILD_DIR [cuda] — run every unit-test program and tool test (with cuda: the GPU op checks
# in BUILD_DIR/cuda-tests instead), then print "N passed, N failed".
# Each test prints "PASS name" or "FAIL name: why"; a program that dies without saying so counts as
# one failure under its own name. Exit status 1 when anything failed.
set -u
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run_one() { # name command...
    name=$1; shift
    out=$("$@" 2>&1); rc=$?
    printf '%s\n' "$out" | grep -E '^(PASS|FAIL) ' >>"$log"
    printf '%s\n' "$out" | grep -E '^(PASS|FAIL|#) ' || true
    if [ $rc -ne 0 ] && ! printf '%s\n' "$out" | grep -q '^FAIL '; then
        echo "FAIL $name: exited with status $rc" | tee -a "$log"
        printf '%s\n' "$out" | tail -n 20 | sed 's/^/    /'
    fi
}

if [ "${2:-}" = cuda ]; then
    for t in "$build"/cuda-tests/check_*; do
        [ -x "$t" ] || continue
        run_one "$(basename "$t")" "$t"
    done
else
    for t in "$build"/tests/test_*; do
        [ -x "$t" ] || continue
        run_one "$(basename "$t")" "$t"
    done
    for t in "$build"/cuda-emu/check_*; do # the CUDA backend's checks on its CPU emulation
        [ -x "$t" ] && [ "${t%.o}" = "$t" ] || continue
        run_one "emulated $(basename "$t")" "$t"
    done
    for t in "$top"/tests/tools/t*.sh; do
        [ -f "$t" ] || continue
        run_one "$(basename "$t")" env BUILD="$top/$build" TOP="$top" sh "$t"
    done
fi

passed=$(grep -c '^PASS ' "$log")
failed=$(grep -c '^FAIL ' "$log")
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
