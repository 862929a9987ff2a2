#!/bin/sh
# run.sh BUILD_DIR — `make bench`: figures measured in this run, printed as a table.
#
# Stream: pairs of 224x224x3 u8 views (crops of a real photo) written by one process and read by
# another through a pipe, raw and at zstd levels; CPU seconds per 1000 pairs on each side; and the
# reader's share of a core when the writer is paced at 3000 pairs/s (a GPU's appetite).
# Peer: the same pairs as PyTorch tensors through a multiprocessing pipe (pickled, as a DataLoader
# worker's queue would carry them without shared memory), when Debian's python3-torch is present.
# Shard: decode + resize to short side 256 + re-encode at quality 90 of the real photos in
# ../shared/data/photos (each copied several times), by moco-shard with 1 and with all threads,
# against PIL doing the same on one core.
set -u
build=${1:-build}
top=$(cd "$(dirname "$0")/../.." && pwd)
bench=$build/bench/stream_bench
photo=$top/../shared/data/photos/astronaut.png
pairs=${BENCH_PAIRS:-20000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" "$2"; }

run() { # label level rate extra_writer_flag
    "$bench" write --pairs "$4" --level "$2" --rate "$3" --png "$photo" $5 2>"$tmp/w" | "$bench" read 2>"$tmp/r"
    wp=$(field pairs "$tmp/w"); ww=$(field wall_s "$tmp/r"); wc=$(field cpu_s "$tmp/w"); rc=$(field cpu_s "$tmp/r")
    awk -v l="$1" -v p="$wp" -v w="$ww" -v wc="$wc" -v rc="$rc" 'BEGIN {
        printf "%-34s %10.0f %14.3f %14.3f %12.1f%%\n", l, p / w, 1000 * wc / p, 1000 * rc / p, 100 * rc / w }'
}

echo "stream through a pipe: 224x224x3 u8 view pairs ($(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
printf "%-34s %10s %14s %14s %13s\n" "" "pairs/s" "writer cpu s" "reader cpu s" "reader core"
printf "%-34s %10s %14s %14s %13s\n" "" "" "per 1000" "per 1000" "share"
run "raw (--level 0)" 0 0 "$pairs" ""
run "raw, zero-copy (vmsplice)" 0 0 "$pairs" --zero-copy
run "zstd --level -7 (fastest tried)" -7 0 $((pairs / 2)) ""
run "zstd --level 1" 1 0 $((pairs / 4)) ""
run "raw, paced at 3000 pairs/s" 0 3000 9000 ""
run "raw zero-copy, paced at 3000/s" 0 3000 9000 --zero-copy
run "zstd -7, paced at 3000/s" -7 3000 9000 ""
# The floor: what read() alone costs for the same bytes through the same kind of pipe.
"$bench" write --pairs 9000 --level 0 --rate 3000 --png "$photo" 2>/dev/null | "$bench" drain 2>"$tmp/d" >/dev/null
awk -F'[:,}]' '{ for (i = 1; i < NF; i++) { if ($i ~ /wall_s/) w = $(i + 1); if ($i ~ /cpu_s/) c = $(i + 1) } }
    END { printf "%-34s %10s %14s %14s %12.1f%%\n", "bare read(2) of the same bytes, 3000/s", "", "", "", 100 * c / w }' "$tmp/d"

if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    /usr/bin/python3 "$top/tests/bench/pipe_peer.py" --pairs $((pairs / 4)) >"$tmp/peer" 2>&1 || true
    ours=$("$bench" write --pairs $((pairs / 4)) --level 0 --png "$photo" 2>/dev/null | "$bench" read 2>&1 | sed -n 's/.*"pairs":\([0-9]*\),"wall_s":\([0-9.]*\).*/\1 \2/p')
    peer=$(sed -n 's/^pairs_per_s=//p' "$tmp/peer")
    if [ -n "$peer" ] && [ -n "$ours" ]; then
        echo "$ours $peer" | awk '{ o = $1 / $2; printf "peer: torch uint8 tensors through a multiprocessing pipe %.0f pairs/s; raw stream %.0f pairs/s: %.1fx\n", $3, o, o / $3 }'
    else
        echo "peer: torch pipe benchmark failed: $(tail -n 3 "$tmp/peer")"
    fi
else
    echo "peer: skipped (Debian's python3-torch not installed)"
fi

echo
photos=$top/../shared/data/photos
copies=${BENCH_COPIES:-20}
mkdir -p "$tmp/photos/all"
for i in $(seq "$copies"); do
    for f in "$photos"/*.jpg "$photos"/*.png; do
        case $f in *truncated*) continue ;; esac
        cp "$f" "$tmp/photos/all/$i-$(basename "$f")"
    done
done
n=$(ls "$tmp/photos/all" | wc -l)
echo "shard: decode + resize to short side 256 + JPEG quality 90, $n photos (${copies}x the $((n / copies)) in shared/data/photos)"
shard_rate() { # threads
    t0=$(date +%s.%N)
    "$build/bin/moco-shard" -q --out "$tmp/shards-$1" --short-side 256 --store jpeg --quality 90 --level 1 \
        --threads "$1" "$tmp/photos" >/dev/null 2>&1
    t1=$(date +%s.%N)
    rm -rf "$tmp/shards-$1"
    echo "$n $t0 $t1" | awk '{ printf "%.1f", $1 / ($3 - $2) }'
}
one=$(shard_rate 1)
cores=$(nproc)
all=$(shard_rate "$cores")
if /usr/bin/python3 -c 'import PIL' 2>/dev/null; then
    peer=$(/usr/bin/python3 "$top/tests/bench/shard_peer.py" "$tmp/photos/all" 1 | sed -n 's/^images_per_s=//p')
else
    peer=""
fi
printf "%-40s %10s %10s\n" "" "images/s" "vs PIL"
printf "%-40s %10s %10s\n" "PIL 9.4 (python3-pil), one core" "${peer:-n/a}" "1.0x"
ratio() { echo "$1 $2" | awk '{ if ($2 > 0) printf "%.1fx", $1 / $2; else printf "n/a" }'; }
printf "%-40s %10s %10s\n" "moco-shard --threads 1" "$one" "$(ratio "$one" "${peer:-0}")"
printf "%-40s %10s %10s\n" "moco-shard --threads $cores" "$all" "$(ratio "$all" "${peer:-0}")"
echo "$one $all" | awk -v c="$cores" '{ printf "scaling: %.2fx with %d threads (%.0f%% of linear)\n", $2 / $1, c, 100 * $2 / $1 / c }'

# Augment: MoCo v2 pairs (224 px) from ImageNet-like JPEGs (the photos re-encoded at 500 px long
# side, quality 90), per core, beside ../shared/peers/augment_torchvision.py on the same files.
echo
if /usr/bin/python3 -c 'import torchvision' 2>/dev/null; then
    mkdir -p "$tmp/aug/j"
    sh "$top/tests/bench/make-photos.sh" "$photos" "$tmp/aug/j"
    secs=${BENCH_SECONDS:-5}
    peer=$(/usr/bin/python3 "$top/../shared/peers/augment_torchvision.py" --seconds "$secs" "$tmp"/aug/j/*.jpg)
    fast=$("$build/bench/augment_bench" --seconds "$secs" "$tmp"/aug/j/*.jpg)
    exact=$("$build/bench/augment_bench" --exact --seconds "$secs" "$tmp"/aug/j/*.jpg)
    get() { echo "$2" | sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p"; }
    pp=$(get pairs_per_s "$peer")
    echo "augment: MoCo v2 pairs of 224x224 views from $(ls "$tmp"/aug/j | wc -l) JPEGs at 500 px, quality 90, one core"
    printf "%-44s %10s %8s %14s\n" "" "pairs/s" "vs peer" "decode share"
    printf "%-44s %10s %8s %14s\n" "torchvision + PIL (peers/augment_torchvision)" "$pp" "1.0x" "$(get decode_share "$peer")"
    for row in "libcommon, DCT-scaled decode:$fast" "libcommon, --exact (full-size decode):$exact"; do
        label=${row%%:*}; json=${row#*:}
        r=$(get pairs_per_s "$json")
        printf "%-44s %10s %8s %14s\n" "$label" "$r" "$(ratio "$r" "$pp")" "$(get decode_share "$json")"
    done
    # the tool end to end (shards in, views out to /dev/null), 1 thread and all
    "$build/bin/moco-shard" -q --out "$tmp/aug/shards" "$tmp/aug/j"
    tool_rate() {
        t0=$(date +%s.%N)
        "$build/bin/moco-augment" -q --level 0 --epochs 40 --threads "$1" "$tmp/aug/shards" >/dev/null
        t1=$(date +%s.%N)
        echo "$t0 $t1" | awk -v n=$((40 * $(ls "$tmp"/aug/j | wc -l))) '{ printf "%.1f", n / ($2 - $1) }'
    }
    a1=$(tool_rate 1); an=$(tool_rate "$cores")
    printf "%-44s %10s %8s\n" "moco-augment --threads 1 (raw views out)" "$a1" "$(ratio "$a1" "$pp")"
    printf "%-44s %10s %8s\n" "moco-augment --threads $cores" "$an" "$(ratio "$an" "$pp")"
    echo "$a1 $an" | awk -v c="$cores" '{ printf "scaling: %.2fx with %d threads (%.0f%% of linear)\n", $2 / $1, c, 100 * $2 / $1 / c }'
    # moco-pretrain's reader: the batcher (raw u8 batches of 256, as the GPU trainer takes them)
    # on pairs of 224 px views through a pipe, 8,000 of them (a file of 400, twenty times over)
    "$build/bin/moco-augment" -q --level 0 --epochs 40 -o "$tmp/aug/pairs.tsz" "$tmp/aug/shards"
    rd=$(for i in $(seq 20); do cat "$tmp/aug/pairs.tsz"; done | "$build/bench/batcher_bench")
    printf "reader: moco-pretrain's batcher on 224 px pairs from a pipe: %s pairs/s, %s ms of CPU per pair\n" \
        "$(get pairs_per_s "$rd")" "$(get reader_cpu_ms_per_pair "$rd")"
    rm -f "$tmp/aug/pairs.tsz"
else
    echo "augment: skipped (Debian's python3-torchvision not installed)"
fi

# MoCo step on the CPU backend beside ../shared/peers/moco_torch.py --device cpu: the same model,
# batch, queue and threads, random u8 pairs normalised inside the step (as the peer does by default).
# Peak memory: each process's maximum resident size (the peer's through tests/bench/peak_rss.py).
echo
if /usr/bin/python3 -c 'import torch, torchvision' 2>/dev/null; then
    steps=${BENCH_STEPS:-8}
    echo "MoCo v2 step, CPU, $cores threads, median of $steps steps after 2 warm-up steps"
    printf "%-58s %9s %9s %8s %10s %10s\n" "" "ours" "PyTorch" "ratio" "ours MiB" "peer MiB"
    step_row() { # label flags...
        label=$1; shift
        o=$("$build/bench/moco_step_bench" "$@" --threads "$cores" --warmup 2 --steps "$steps")
        p=$(/usr/bin/python3 "$top/tests/bench/peak_rss.py" "$top/../shared/peers/moco_torch.py" --device cpu \
            "$@" --threads "$cores" --warmup 2 --steps "$steps" | tail -n 1)
        get() { echo "$2" | sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p"; }
        op=$(get pairs_per_s "$o"); pp=$(get pairs_per_s "$p")
        printf "%-58s %9s %9s %8s %10s %10s\n" "$label" "$op" "$pp" "$(ratio "$op" "$pp")" \
            "$(get peak_rss_mib "$o")" "$(get peak_rss_mib "$p")"
    }
    step_row "ResNet-18 CIFAR stem, 32 px, batch 64, K 65536 (pairs/s)" --arch resnet18 --cifar-stem --size 32 --batch 64
    o=$("$build/bench/moco_step_bench" --arch resnet18 --cifar-stem --size 32 --batch 64 --direct-conv \
        --threads "$cores" --warmup 2 --steps "$steps")
    printf "%-58s %9s\n" "  the same, ours with --direct-conv (no Winograd)" \
        "$(echo "$o" | sed -n 's/.*"pairs_per_s": *\([0-9.]*\).*/\1/p')"
    step_row "demo: width 16, 28 px grey, batch 256, K 4096, G 4" --arch resnet18 --cifar-stem --width 16 \
        --in-channels 1 --size 28 --batch 256 --K 4096 --m 0.99 --bn-groups 4
else
    echo "MoCo step: skipped (Debian's python3-torch not installed)"
fi
