#!/bin/sh
# table.sh OUT EPOCHS DATA — the demo's result: linear-probe accuracy of each encoder and the time of each
# stage, from the reports and timings the Makefile left in OUT.
out=$1 epochs=$2 data=${3:-}
num() { sed -n "s/.*\"$1\": *\([0-9.eE+-]*\).*/\1/p" "$2" | head -n 1; }
secs() { cat "$out/times/$1" 2>/dev/null || echo "-"; }
pct() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else printf "%.2f%%", (v <= 1 ? 100 * v : v) }'; }
sum() { awk '{ s += $1 } END { printf "%.1f", s }'; }
echo
echo "linear probe on $data (L-BFGS on standardised features, L2 chosen on a held-out tenth of train;"
echo "train $(num n_train "$out/report-moco.json"), test $(num n_val "$out/report-moco.json"))"
printf "%-40s %9s %9s %7s %12s\n" "features" "top-1" "top-5" "L2" "seconds"
row() { # label report seconds
    printf "%-40s %9s %9s %7s %12s\n" "$1" "$(pct "$(num top1 "$2")")" "$(pct "$(num top5 "$2")")" "$(num l2 "$2")" "$3"
}
row "MoCo v2 pretrained, $epochs epochs" "$out/report-moco.json" "$(secs pretrain)"
row "random-init encoder (same network)" "$out/report-random.json" "-"
row "raw pixels" "$out/report-raw.json" "-"
echo
echo "seconds per stage:"
for s in shard-train shard-test pretrain extract-moco-train extract-moco-test extract-random-train \
    extract-random-test probe-moco probe-random probe-raw; do
    printf "  %-22s %8s\n" "$s" "$(secs $s)"
done
printf "  %-22s %8s\n" "total" "$(cat "$out"/times/* 2>/dev/null | sum)"
echo
echo "loss curve: $out/loss.svg (from $out/run/log.jsonl); augmented pairs: $out/pairs-sheet.png;"
echo "first training images: $out/train-sheet.png; model: $out/run/last.tsz; probe reports: $out/report-*.json"
