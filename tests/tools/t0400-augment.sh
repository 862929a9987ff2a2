# t0400-augment.sh — moco-augment from real shards: shapes, determinism, epochs, parts, bad records.
. "$(dirname "$0")/lib.sh"
S=$BIN/moco-shard
A=$BIN/moco-augment
I=$BIN/moco-inspect
PY=/usr/bin/python3
DIGEST=$TOP/tests/tools/stream_digest.py
ids() { $I --head 100000 "$1" | sed -n 's/^record [0-9]*: sample \([0-9]*\).*/\1/p' | sort -n | tr '\n' ' '; }

mkdir -p "$T/photos/a" "$T/photos/b"
cp "$PHOTOS/china.jpg" "$PHOTOS/rocket.jpg" "$PHOTOS/chelsea.png" "$T/photos/a/"
cp "$PHOTOS/flower.jpg" "$PHOTOS/coffee.png" "$PHOTOS/hubble_deep_field.jpg" "$T/photos/b/"
$S -q --out "$T/shards" --shard-size 2 --shuffle "$T/photos"

expect v2_pairs_from_shards 0 '' -- "$A -q --threads 2 $T/shards >$T/v.tsz"
expect v2_stream_is_whole 0 '' -- "$I $T/v.tsz"
check v2_views_shape_and_count "grep -q 'views stream from moco-augment' $T/out && grep -q '6 records' $T/out && grep -q 'u8\[2,224,224,3\]' $T/out"
expect v2_header_tells_the_consumer 0 '' -- "$I --header $T/v.tsz"
check v2_header_fields "$PY -c 'import json; h=json.load(open(\"$T/out\")); assert h[\"recipe\"]==\"v2\" and h[\"size\"]==224 and h[\"views\"]==2 and h[\"samples\"]==6 and h[\"classes\"]==[\"a\",\"b\"] and len(h[\"mean\"])==3'"
expect same_bytes_with_one_thread 0 '' -- "$A -q --threads 1 $T/shards >$T/v1.tsz"
check same_views_whatever_threads "[ \"\$($PY $DIGEST $T/v.tsz | cut -d' ' -f2)\" = \"\$($PY $DIGEST $T/v1.tsz | cut -d' ' -f2)\" ]"
expect different_seed_different_views 0 '' -- "$A -q --seed 1 $T/shards >$T/v2.tsz"
check seed_changes_views "[ \"\$($PY $DIGEST $T/v.tsz | cut -d' ' -f2)\" != \"\$($PY $DIGEST $T/v2.tsz | cut -d' ' -f2)\" ]"
expect two_epochs 0 '' -- "$A -q --epochs 2 --size 32 $T/shards >$T/e2.tsz"
check two_epochs_give_each_sample_twice "[ \"\$(ids $T/e2.tsz)\" = '0 0 1 1 2 2 3 3 4 4 5 5 ' ]"
expect part_0_of_2 0 '' -- "$A -q --part 0/2 --size 32 $T/shards >$T/p0.tsz"
expect part_1_of_2 0 '' -- "$A -q --part 1/2 --size 32 $T/shards >$T/p1.tsz"
check parts_cover_every_sample_once "[ \"\$(cat $T/p0.tsz $T/p1.tsz | $I --head 100 - | sed -n 's/^record [0-9]*: sample \([0-9]*\).*/\1/p' | sort -n | tr '\n' ' ')\" = '0 1 2 3 4 5 ' ]"
expect eval_recipe_one_view 0 '' -- "$A -q --recipe eval --size 64 $T/shards | $I -"
check eval_view_shape "grep -q 'u8\[1,64,64,3\]' $T/out"
expect eval_is_deterministic 0 '' -- "$A -q --recipe eval --size 64 --seed 5 $T/shards >$T/ev1.tsz && $A -q --recipe eval --size 64 --seed 9 $T/shards >$T/ev2.tsz"
check eval_views_do_not_depend_on_the_seed "[ \"\$($PY $DIGEST --by-sample $T/ev1.tsz)\" = \"\$($PY $DIGEST --by-sample $T/ev2.tsz)\" ]"
expect exact_mode_runs 0 '' -- "$A -q --exact --size 48 $T/shards | $I -q -"
expect contact_sheet_of_views 0 '12 images drawn' -- "$I --png $T/views.png --tile 64 $T/v.tsz"

# small grey images, the demo's recipe as a command line
$PY - "$T" <<'PY'
import gzip, struct, sys
t = sys.argv[1]
imgs = bytes((i * 7 + k) % 256 for i in range(40) for k in range(784))
gzip.open(t + "/g-images-idx3-ubyte.gz", "wb").write(struct.pack(">IIII", 0x803, 40, 28, 28) + imgs)
gzip.open(t + "/g-labels-idx1-ubyte.gz", "wb").write(struct.pack(">II", 0x801, 40) + bytes(i % 4 for i in range(40)))
PY
$S -q --out "$T/grey" --shard-size 16 --level 0 "$T/g-images-idx3-ubyte.gz"
expect small_grey_recipe 0 '' -- "$A -q --size 28 --jitter 0.4,0.4,0,0 --blur 0 $T/grey | $I -"
check small_grey_views_shape "grep -q 'u8\[2,28,28,1\]' $T/out && grep -q '40 records' $T/out"

# damage one record of a raw shard: skipped with a warning, or fatal with --strict
cp "$T/grey/shard-00000.tsz" "$T/damaged.tsz"
printf '\377' | dd of="$T/damaged.tsz" bs=1 seek=3000 conv=notrunc 2>/dev/null
expect damaged_record_is_skipped 3 'damaged.tsz: record [0-9]+: checksum mismatch .*skipped; --strict to stop' -- "$A -q --size 28 $T/damaged.tsz >$T/dv.tsz"
expect views_after_the_damage_are_whole 0 '' -- "$I $T/dv.tsz"
check one_record_fewer "grep -q '15 records' $T/out"
expect damaged_record_with_strict 1 'checksum mismatch' -- "$A -q --strict --size 28 $T/damaged.tsz >/dev/null"

expect reader_gone_ends_quietly 0 EMPTY -- "$A -q --epochs 1000 --size 32 $T/shards | head -c 1000 >/dev/null; exit 0"
expect producer_status_zero_on_epipe 0 '' -- "{ $A -q --epochs 1000 --size 32 $T/shards; echo \$? >$T/st; } | head -c 1000 >/dev/null; [ \"\$(cat $T/st)\" = 0 ]"
expect views_are_not_shards 1 "a 'views' stream, not shards of images" -- "$A -q $T/v.tsz >/dev/null"
expect refuses_a_terminal 0 '' -- "command -v script >/dev/null || exit 0; script -qec '$A -q $T/shards' /dev/null | grep -q 'refusing to write a binary stream to a terminal'"
expect bad_recipe_is_usage_error 2 "unknown recipe 'v9'" -- "$A --recipe v9 $T/shards"
expect no_shards_is_usage_error 2 'no shards given' -- "$A"
