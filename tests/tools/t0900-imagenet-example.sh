# t0900-imagenet-example.sh — examples/imagenet/Makefile, the full ImageNet recipe, run end to end on
# a tiny ImageNet-shaped tree (a train tar holding one tar per class, a class-folder val) made from
# ../shared/data/photos, with a tiny network: every command of the recipe runs for real. A dry run
# (make -n) with the defaults shows the full-size recipe's settings.
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
mkdir -p "$T/in/classes/n00000001" "$T/in/classes/n00000002" "$T/in/val/n00000001" "$T/in/val/n00000002"
i=0
for f in "$PHOTOS"/*.jpg "$PHOTOS"/*.png; do
    case $f in *truncated*) continue ;; esac
    i=$((i + 1))
    c=n0000000$((i % 2 + 1))
    cp "$f" "$T/in/classes/$c/${c}_$i.JPEG"          # ImageNet names PNGs .JPEG too
    cp "$f" "$T/in/val/$c/val_$i.JPEG"
done
(cd "$T/in/classes" && for c in n*; do tar -cf "$c.tar" -C "$c" .; done && tar -cf ../ILSVRC2012_img_train.tar n*.tar)
TINY="ARCH=resnet18 WIDTH=4 SIZE=32 RESIZE=36 SHORT_SIDE=40 BATCH=4 QUEUE=16 GROUPS=2 EPOCHS=2 LINCLS_EPOCHS=2 LINCLS_MILESTONES=1 THREADS=2"
expect imagenet_recipe_runs_end_to_end 0 '' -- "make -s -C $TOP/examples/imagenet BIN=$BUILD/bin IMAGENET=$T/in OUT=$T/inet $TINY >$T/make.log 2>&1 || { cat $T/make.log >&2; exit 1; }"
check shards_of_both_classes "[ -f $T/inet/shards/train/index.json ] && [ -f $T/inet/shards/val/index.json ] && [ \$(wc -l <$T/inet/classes.txt) -eq 2 ]"
check pretrained_two_epochs "$BUILD/bin/moco-inspect --header $T/inet/run/last.tsz | grep -q '\"epochs\": 2'"
check both_linear_protocols_report "$PY -c '
import json
for f in (\"lincls\", \"fast\"):
    r = json.load(open(\"$T/inet/\" + f + \".json\"))
    assert r[\"n_val\"] == 10 and 0 <= r[\"top1\"] <= 100, r
assert json.load(open(\"$T/inet/lincls.json\"))[\"mode\"] == \"streaming\"
'"
expect dry_run_shows_the_full_recipe 0 '' -- "make -n -B -C $TOP/examples/imagenet BIN=/usr/local/bin IMAGENET=$T/in OUT=$T/dry | grep -q -- '--arch resnet50 --width 64 --dim 128 --queue 65536 --momentum-key 0.999 --temperature 0.2 --bn-groups 8 --batch 256 --lr 0.03 --wd 1e-4 --schedule cos --epochs 200'"

# the same pretraining as two MPI ranks, each fed its own part of the shards by its own augmenter
if command -v mpirun >/dev/null 2>&1; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
    export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
    expect imagenet_pretraining_as_two_ranks 0 '' -- "make -s -C $TOP/examples/imagenet BIN=$BUILD/bin IMAGENET=$T/in OUT=$T/ranks $TINY SHARD_SIZE=3 RANKS=2 MPIRUN='mpirun --oversubscribe --bind-to none -np 2' pretrain >$T/make2.log 2>&1 || { cat $T/make2.log >&2; exit 1; }"
    check two_ranks_of_half_the_batch "$BUILD/bin/moco-inspect --header $T/ranks/run/last.tsz | $PY -c '
import json, sys
h = json.load(sys.stdin)
assert h[\"ranks\"] == 2 and h[\"batch\"] == 2 and h[\"bn_groups\"] == 1 and h[\"epochs\"] == 2, h
'"
fi
check slurm_script_parses "sh -n $TOP/examples/imagenet/pretrain.slurm"
