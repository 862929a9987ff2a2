#!/bin/sh
# device-check.sh LOGDIR — what a lent GPU machine runs, in one call (../shared/DEVICE.md), from the
# build made on the CPU machine and carried along (build/, with build/peers/ holding the PyTorch
# peer). Full logs go to LOGDIR; each result is printed on stderr as it comes, a short table last.
# The GPU machine lacks oneDNN, OpenBLAS and the rest: make them a bundle first (bundle-libs.sh),
# then from the repository root:
#   run: sh tests/cuda/device-check.sh LOGDIR   (carry: build/bin build/lib build/cuda-tests
#        build/helpers build/bench build/peers build/photos500; tar LOGDIR into $OUT: at most 8 files)
#   PARTS="checks tools bench e2e profile" picks the parts (default the first four; make check-cuda
#   runs checks, make bench-cuda bench and e2e); STEPS=N sets the benchmark's timed steps (default
#   20); QUICK=1 keeps only the benchmark's four bf16 rows beside the peer's.
#   On an H200 (2026-11-28): checks and tools 30 s, bench 190 s (about 240 s with the two rows added
#   since; QUICK=1 about 130 s), e2e 165 s, profile 80 s; the machine's start adds about 35 s.
# 1. make check-cuda's programs: every op, the ResNet and the MoCo step against the CPU backend, in
#    float32 (TF32 off, <= 1e-4) and bf16 (<= 2e-2 per op).
# 2. the tools on the GPU against the CPU, on views of the repository's test images: moco-pretrain
#    --device cuda --precision f32 for 4 steps against the CPU run (bf16: 1 step); checkpoints moving between
#    devices (a GPU checkpoint resumed on the CPU and a CPU one on the GPU, both against 6 CPU
#    steps); moco-extract's features on the GPU against the CPU's (tests/helpers/stream_compare);
#    moco-linear's SGD steps on the GPU against the CPU's on synthetic labelled features (the reports'
#    train loss and top-1).
# 3. the issue's benchmark: ResNet-50, 224 px, batch 256, K 65536, the MoCo v2 step and SGD, ours
#    (bf16 with and without CUDA graphs, without copying the next views ahead, with the stem's 3
#    channels not padded to 8 (MOCO_CUDA_PAD_CHANNELS=0), then float32) beside ../shared/peers/moco_torch.py --amp bf16 --channels-last, with
#    and without 8 key-BN groups, in the same call; pairs/s, peak GPU memory, and the share of the
#    card's dense bf16 rate (989 TFLOP/s on H100/H200 SXM) the step reaches, counting 4 ResNet-50
#    forwards per pair (query forward and backward = 3, key forward = 1) at 4.09 GMAC each.
# 4. end to end, as users run it: moco-augment --threads 15 | moco-pretrain --device cuda, ResNet-50
#    batch 256, on the photos re-encoded as 500 px JPEGs of quality 90 (build/photos500, made at
#    build time) copied 300 times (the pipe zero-copy); its log's pairs/s and data-wait share over
#    steps 40 to 160; beside the peer's --data DIR --workers 16 run (its steady_pairs_per_s, 120
#    steps).
# Exit status 0 when every check passed (the benchmark is reported, not judged).
set -u
logs=${1:?usage: device-check.sh LOGDIR}
build=${BUILD:-build}
steps=${STEPS:-20}
parts=${PARTS:-checks tools bench e2e}
want() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
mkdir -p "$logs"

# The bundle of libraries the GPU machine lacks (tests/cuda/bundle-libs.sh), on our programs' path
# only: Python (the peer) keeps the environment it came with.
python_env=${LD_LIBRARY_PATH-}
py() { LD_LIBRARY_PATH=$python_env python3 "$@"; }
py_within() { # SECONDS ARGS...: py under a time limit
    limit=$1
    shift
    timeout "$limit" env LD_LIBRARY_PATH="$python_env" python3 "$@"
}
R50="--arch resnet50 --size 224 --batch 256 --K 65536" # the benchmark's model (bench, profile)
libs=$python_env
if [ -f "$build/lib/deps.tar.xz" ]; then
    deps=${TMPDIR:-/tmp}/moco-deps
    mkdir -p "$deps" && py -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$build/lib/deps.tar.xz" "$deps" &&
        libs=$deps${libs:+:$libs}
fi
for lib in libcudnn.so.9 libcublas.so.13 libnccl.so.2; do # CUDA's own, where the loader does not know them
    ldconfig -p 2>/dev/null | grep -q "$lib" && continue
    for dir in /usr/local/cuda/lib64 /usr/local/cuda/lib /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib; do
        [ -e "$dir/$lib" ] && { libs=${libs:+$libs:}$dir; break; }
    done
done
export LD_LIBRARY_PATH=$libs
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    nproc
} >"$logs/machine.txt"

status=0
summary=""
progress() { echo "device-check: $*" >&2; } # each result as it comes, in case the call is cut short
for t in "$build"/cuda-tests/check_*; do
    want checks || break
    [ -x "$t" ] || continue
    name=$(basename "$t")
    start=$(date +%s)
    timeout 120 "$t" >"$logs/$name.log" 2>&1
    rc=$?
    passed=$(grep -c '^PASS ' "$logs/$name.log")
    failed=$(grep -c '^FAIL ' "$logs/$name.log")
    [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1 # died without saying why
    [ "$failed" -ne 0 ] && status=1
    line=$(printf '%-16s %4d passed %4d failed  exit %3d  %4ds' "$name" "$passed" "$failed" "$rc" $(($(date +%s) - start)))
    progress "$line"
    summary="$summary$line
"
done
if want checks && [ -z "$summary" ]; then
    echo "device-check: no checks under $build/cuda-tests (build with CUDA here first)"
    exit 1
fi

tools=""
bin=$build/bin
cmp=$build/helpers/stream_compare
work=$logs/tools
mkdir -p "$work"
tool_row() { # label command...: run, record pass/fail with the comparison's last line
    label=$1; shift
    if "$@" >"$work/last.log" 2>&1; then
        tools="$tools$(printf '%-52s pass  %s' "$label" "$(tail -n 1 "$work/last.log")")
"
    else
        status=1
        tools="$tools$(printf '%-52s FAIL  %s' "$label" "$(tail -n 2 "$work/last.log" | tr '\n' ' ')")
"
    fi
    progress "$(printf '%s' "$tools" | tail -n 1)"
    cat "$work/last.log" >>"$logs/tools.log"
}
want tools && M="--arch resnet18 --cifar-stem --width 8 --dim 16 --queue 64 --momentum-key 0.99 --bn-groups 2 --batch 8 --lr 0.003 --save-every 0 --threads 4 -q"
if ! want tools; then
    :
elif "$bin/moco-shard" -q --out "$work/shards" tests/fixtures/image >>"$logs/tools.log" 2>&1 &&
    "$bin/moco-augment" -q --size 32 --epochs 8 --level 0 -o "$work/pairs.tsz" "$work/shards" >>"$logs/tools.log" 2>&1 &&
    "$bin/moco-augment" -q --recipe eval --size 32 --resize 32 --level 0 -o "$work/eval.tsz" "$work/shards" >>"$logs/tools.log" 2>&1; then
    pre() { "$bin/moco-pretrain" $M "$@" "$work/pairs.tsz"; }
    # Float32 training on another device adds in another order, and now and then a pre-ReLU value
    # within a rounding of zero takes the other sign, moving its element's gradient and the few
    # tensors it feeds (an H200 run: 4 of 313 at 2-6e-3, the rest within 1e-5). A few such tensors
    # may pass 2e-3 (none 2e-2); a wrong op moves most of them.
    same() { "$cmp" "$work/$1/last.tsz" "$work/$2/last.tsz" 2e-3 8 2e-2; }
    cpu_runs() {
        pre --max-steps 1 --log "$work/cpu1.jsonl" --log-every 1 --out "$work/cpu1" && pre --max-steps 4 --out "$work/cpu" && pre --max-steps 6 --out "$work/cpu6" &&
            echo "1, 4 and 6 steps"
    }
    gpu_f32() { pre --device cuda --precision f32 --max-steps 4 --out "$work/gpu" && same gpu cpu; }
    gpu_to_cpu() { pre --max-steps 6 --resume "$work/gpu/last.tsz" --out "$work/g2c" && same g2c cpu6; }
    cpu_to_gpu() { pre --device cuda --precision f32 --max-steps 6 --resume "$work/cpu/last.tsz" --out "$work/c2g" && same c2g cpu6; }
    # bf16: the loss within 2e-2 of the CPU's and every tensor finite (check.h's whole_net_tolerance:
    # at these widths the rest is reported, not held to a bound)
    gpu_bf16() {
        pre --device cuda --precision bf16 --max-steps 1 --log "$work/gpu16.jsonl" --log-every 1 --out "$work/gpu16" &&
            "$cmp" "$work/gpu16/last.tsz" "$work/cpu1/last.tsz" 1e9 && py -c "
import json, sys
a, b = (json.loads(open(sys.argv[i]).readline())['loss'] for i in (1, 2))
assert abs(a - b) <= 2e-2 * abs(b), (a, b)
print('step 1 loss %.5f and %.5f (CPU); every tensor finite' % (a, b))" "$work/gpu16.jsonl" "$work/cpu1.jsonl"
    }
    extract() {
        "$bin/moco-extract" -q "$work/cpu/last.tsz" "$work/eval.tsz" -o "$work/cpu.feat" &&
            "$bin/moco-extract" -q --device cuda "$work/cpu/last.tsz" "$work/eval.tsz" -o "$work/gpu.feat" &&
            "$cmp" "$work/gpu.feat" "$work/cpu.feat" 1e-3
    }
    linear() { # the SGD protocol on labelled synthetic features, on the GPU and here: the same report
        "$build/helpers/mkfeatures" --samples 600 --dim 64 --classes 10 --sep 0.15 >"$work/lin.feat" &&
            "$bin/moco-linear" -q --epochs 3 --batch 32 --lr 0.1 --report "$work/lin-cpu.json" "$work/lin.feat" >/dev/null &&
            "$bin/moco-linear" -q --device cuda --epochs 3 --batch 32 --lr 0.1 --report "$work/lin-gpu.json" "$work/lin.feat" \
                >/dev/null &&
            py -c "
import json, sys
a, b = (json.load(open(sys.argv[i]))['train'] for i in (1, 2))
assert abs(a['top1'] - b['top1']) <= 0.5 and abs(a['loss'] - b['loss']) <= 1e-4 * (1 + b['loss']), (a, b)
print('train top-1 %.2f%% and %.2f%%, loss %.6f and %.6f' % (a['top1'], b['top1'], a['loss'], b['loss']))" "$work/lin-gpu.json" "$work/lin-cpu.json"
    }
    tool_row "moco-pretrain on the CPU" cpu_runs
    tool_row "moco-pretrain --device cuda f32, 4 steps vs CPU" gpu_f32
    tool_row "GPU checkpoint resumed on the CPU, vs 6 CPU steps" gpu_to_cpu
    tool_row "CPU checkpoint resumed on the GPU, vs 6 CPU steps" cpu_to_gpu
    tool_row "moco-pretrain --device cuda bf16, 1 step: loss vs CPU" gpu_bf16
    tool_row "moco-extract --device cuda f32 vs CPU" extract
    tool_row "moco-linear --device cuda vs CPU (SGD protocol)" linear
else
    status=1
    tools="could not make views of tests/fixtures/image (see $logs/tools.log)
"
fi

bench=""
if want bench; then
    field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^,\"}]*\).*/\1/p" "$2" | tail -n 1; }
    row() { # label log
        pps=$(field pairs_per_s "$2")
        mem=$(field peak_gpu_gib "$2")
        [ -n "$mem" ] || mem=$(field peak_mem_gib "$2")
        share=$(awk -v p="${pps:-0}" 'BEGIN { printf "%.1f%%", 100 * p * 4 * 2 * 4.09e9 / 989e12 }')
        line=$(printf '%-44s %10s %8s GiB %8s' "$1" "${pps:--}" "${mem:--}" "$share")
        progress "$line"
        bench="$bench$line
"
    }
    for groups in 1 8; do
        timeout 150 "$build/bench/moco_step_bench" --device cuda --precision bf16 $R50 --bn-groups $groups \
            --warmup 5 --steps "$steps" >"$logs/ours-bf16-g$groups.json" 2>&1
        row "ours, bf16, $groups key-BN group(s)" "$logs/ours-bf16-g$groups.json"
        py_within 150 "$build/peers/moco_torch.py" --device cuda $R50 --amp bf16 --channels-last \
            --bn-groups $groups --warmup 5 --steps "$steps" >"$logs/peer-bf16-g$groups.json" 2>&1
        row "PyTorch peer, bf16 channels-last, $groups group(s)" "$logs/peer-bf16-g$groups.json"
    done
    if [ -z "${QUICK:-}" ]; then # QUICK=1: the four rows above only
        timeout 150 "$build/bench/moco_step_bench" --device cuda --precision bf16 $R50 --no-cuda-graph --warmup 5 \
            --steps "$steps" >"$logs/ours-bf16-nograph.json" 2>&1
        row "ours, bf16, 1 group, without CUDA graphs" "$logs/ours-bf16-nograph.json"
        timeout 150 "$build/bench/moco_step_bench" --device cuda --precision bf16 $R50 --no-copy-ahead --warmup 5 \
            --steps "$steps" >"$logs/ours-bf16-noahead.json" 2>&1
        row "ours, bf16, 1 group, views copied in the step" "$logs/ours-bf16-noahead.json"
        MOCO_CUDA_PAD_CHANNELS=0 timeout 150 "$build/bench/moco_step_bench" --device cuda --precision bf16 $R50 \
            --warmup 5 --steps "$steps" >"$logs/ours-bf16-nopad.json" 2>&1
        row "ours, bf16, 1 group, stem not padded" "$logs/ours-bf16-nopad.json"
        timeout 150 "$build/bench/moco_step_bench" --device cuda --precision f32 $R50 --warmup 3 --steps "$steps" \
            >"$logs/ours-f32.json" 2>&1
        row "ours, float32 (TF32 off)" "$logs/ours-f32.json"
    fi
fi

e2e=""
if want e2e && [ -n "$(ls "$build"/photos500/*.jpg 2>/dev/null)" ]; then
    scratch=${TMPDIR:-/tmp}/moco-e2e # the images, shards and checkpoint: too big to come back with the logs
    jpegs=$scratch/jpegs
    mkdir -p "$jpegs" "$logs/e2e"
    for i in $(seq 300); do
        for f in "$build"/photos500/*.jpg; do ln -sf "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$jpegs/$i-$(basename "$f")"; done
    done
    "$build/bin/moco-shard" -q --threads 16 --out "$scratch/shards" "$jpegs" >>"$logs/e2e.log" 2>&1
    # each side alone: moco-augment's 15 threads into /dev/null (3,000 images, 2 epochs), and
    # moco-pretrain's reader (tests/bench/batcher_bench) on the same pairs from a file
    t0=$(date +%s.%N)
    "$build/bin/moco-augment" -q --threads 15 --epochs 2 -o /dev/null "$scratch/shards" >>"$logs/e2e.log" 2>&1
    t1=$(date +%s.%N)
    augment_alone=$(echo "$t0 $t1" | awk '{ printf "%.0f", 6000 / ($2 - $1) }')
    "$build/bin/moco-augment" -q --threads 15 --epochs 2 --level 0 -o "$scratch/pairs.tsz" "$scratch/shards" \
        >>"$logs/e2e.log" 2>&1
    reader_alone=$("$build/bench/batcher_bench" <"$scratch/pairs.tsz" 2>>"$logs/e2e.log")
    rm -f "$scratch/pairs.tsz"
    # 3000 images: 11 steps of 256 an epoch; 15 epochs cover the 165 steps
    timeout 200 sh -c "'$build/bin/moco-augment' -q --threads 15 --zero-copy --epochs 15 '$scratch/shards' |
        '$build/bin/moco-pretrain' -q --device cuda --arch resnet50 --batch 256 --max-steps 165 --log '$logs/e2e/log.jsonl' \
        --log-every 10 --save-every 0 --out '$scratch/run'" >>"$logs/e2e.log" 2>&1
    ours=$(awk -F'[:,}]' '/"step"/ { for (i = 1; i < NF; i++) { if ($i ~ /"step"/) s = $(i + 1); if ($i ~ /"pairs_per_s"/) p = $(i + 1); if ($i ~ /"data_wait"/) w = $(i + 1) }
        if (s > 40 && s <= 160) { n++; ps += p; ws += w } } END { if (n) printf "%.0f pairs/s, data wait %.0f%%", ps / n, 100 * ws / n }' "$logs/e2e/log.jsonl" 2>/dev/null)
    py_within 200 "$build/peers/moco_torch.py" --device cuda $R50 --amp bf16 \
        --channels-last --data "$jpegs" --workers 16 --warmup 5 --steps 120 >"$logs/e2e-peer.json" 2>>"$logs/e2e.log"
    peer=$(sed -n 's/.*"steady_pairs_per_s": *\([0-9.]*\).*/\1/p' "$logs/e2e-peer.json" | tail -n 1)
    reader_pps=$(echo "$reader_alone" | sed -n 's/.*"pairs_per_s": *\([0-9.]*\).*/\1/p')
    reader_cpu=$(echo "$reader_alone" | sed -n 's/.*"reader_cpu_ms_per_pair": *\([0-9.]*\).*/\1/p')
    e2e="$(printf '%-44s %s' "moco-augment --threads 15 | moco-pretrain" "${ours:-failed (see e2e.log)}")
$(printf '%-44s %s' "PyTorch peer, --data --workers 16" "${peer:-failed} pairs/s (steady)")
$(printf '%-44s %s' "moco-augment --threads 15 alone" "${augment_alone:-failed} pairs/s")
$(printf '%-44s %s' "moco-pretrain's reader alone (batcher_bench)" "${reader_pps:-failed} pairs/s, ${reader_cpu:--} ms CPU a pair")
"
    progress "$e2e"
fi

# 5. (only when named in PARTS) where the bf16 step's GPU time goes: one timed step of ours under
#    Nsight Compute (tests/cuda/ncu_summary.py sums it by kernel) and the peer under torch.profiler
#    (tests/cuda/profile_peer.py, totals over its 10 steps).
if want profile; then
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
    timeout 240 "${ncu:-ncu}" --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
        --print-units base "$build/bench/moco_step_bench" --profile --device cuda --precision bf16 $R50 --no-cuda-graph \
        --warmup 3 --steps 1 >"$logs/profile-ours.csv" 2>"$logs/profile-ours.log"
    py tests/cuda/ncu_summary.py "$logs/profile-ours.csv" 40 >"$logs/profile-ours.txt" 2>&1
    progress "profile of ours: $(tail -n 1 "$logs/profile-ours.txt")"
    py_within 200 tests/cuda/profile_peer.py "$build/peers/moco_torch.py" --device cuda \
        $R50 --amp bf16 --channels-last --warmup 2 --steps 8 >"$logs/profile-peer.txt" 2>&1
    progress "profile of the peer: $(grep -c . "$logs/profile-peer.txt") lines"
fi

if want checks; then
    echo "== failures and largest errors =="
    grep -h -E '^(FAIL|# )' "$logs"/check_*.log | head -n 80
fi
echo "== machine =="
sed -n 2,3p "$logs/machine.txt"
if want checks; then
    echo "== op checks, GPU against CPU (float32 <= 1e-4, bf16 <= 2e-2) =="
    printf '%s' "$summary"
fi
if want tools; then
    echo "== the tools on the GPU against the CPU (checkpoints and features) =="
    printf '%s' "$tools"
fi
if [ -n "$e2e" ]; then
    echo "== end to end, ResNet-50 batch 256 on 500 px JPEGs (16 cores) =="
    printf '%s' "$e2e"
fi
if [ -n "$bench" ]; then
    echo "== MoCo v2 step, ResNet-50 224 px, batch 256, K 65536 (pairs/s, peak memory, share of bf16 peak) =="
    printf '%s' "$bench"
fi
exit $status
