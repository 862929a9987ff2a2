# t0300-shard.sh — moco-shard on every input kind, with bad images, determinism and parts.
. "$(dirname "$0")/lib.sh"
S=$BIN/moco-shard
I=$BIN/moco-inspect
PY=/usr/bin/python3
# index FIELD-EXPRESSION DIR: evaluate a Python expression over the index as `x`
index() { $PY -c "import json,sys; x=json.load(open('$2/index.json')); print(($1))"; }

# --- a class-per-folder tree with a non-image file and a truncated JPEG
mkdir -p "$T/tree/dog" "$T/tree/cat/sub" "$T/tree/bird"
cp "$PHOTOS/chelsea.png" "$PHOTOS/coffee.png" "$T/tree/cat/"
cp "$PHOTOS/china.jpg" "$T/tree/cat/sub/"
cp "$PHOTOS/flower.jpg" "$PHOTOS/rocket.jpg" "$T/tree/dog/"
cp "$PHOTOS/astronaut.png" "$T/tree/bird/a.JPEG" # a PNG named .JPEG, as ImageNet has
echo "not an image" >"$T/tree/dog/README.txt"
cp "$PHOTOS/truncated.jpg" "$T/tree/dog/zz-truncated.jpg"

expect tree_with_a_bad_image_exits_3 3 'zz-truncated.jpg: truncated JPEG \(skipped; --strict to stop\)' -- "$S -q --out $T/s1 --shard-size 2 $T/tree"
check tree_classes_are_sorted_folder_names "[ \"\$(index \"x['classes']\" $T/s1)\" = \"['bird', 'cat', 'dog']\" ]"
check tree_counts_per_class "[ \"\$(index \"x['class_counts'], x['written'], x['skipped'], x['ignored']\" $T/s1)\" = '([1, 3, 2], 6, 1, 1)' ]"
check tree_makes_shards_of_two "[ \"\$(index \"[s['records'] for s in x['shards']]\" $T/s1)\" = '[2, 2, 2]' ] && [ ! -f $T/s1/shard-00003.tsz ] && [ \$(ls $T/s1 | grep -c tmp) -eq 0 ]"
expect shard_files_are_whole_streams 0 '' -- "cat $T/s1/shard-*.tsz | $I --head 7 -"
check shards_keep_source_jpeg_bytes "grep -q 'record 4: sample 3, label 1 (cat): jpeg u8\[$(stat -c %s "$PHOTOS/china.jpg")\], shape i32\[3\]' $T/out"
expect strict_stops_at_the_bad_image 1 'truncated JPEG \(--strict\)' -- "$S -q --strict --out $T/s2 $T/tree"

# --- resizing and re-encoding: short side 64, RGB, values checked by decoding the stored JPEG
expect short_side_resizes 3 '' -- "$S -q --out $T/s3 --short-side 64 --store raw $T/tree"
expect resized_shapes_have_short_side_64 0 '' -- "$I $T/s3/shard-00000.tsz"
check resized_shape_range "grep -q 'u8\[64,64..96,3\]' $T/out"
expect store_raw_values_match_pil 0 '' -- "$PY $TOP/tests/tools/check_shard_pixels.py $T/s3/shard-00000.tsz $T/tree/cat/chelsea.png 64"
# JPEGs: --exact decodes at full size as PIL does; the default decodes at 1/4 here (640x427 -> 96x64)
expect exact_jpeg_resize 3 '' -- "$S -q --out $T/s3x --exact --short-side 64 --store raw $T/tree"
expect exact_jpeg_matches_pil 0 '' -- "$PY $TOP/tests/tools/check_shard_pixels.py $T/s3x/shard-00000.tsz $T/tree/dog/rocket.jpg 64"
expect dct_scaled_jpeg_is_close_to_pil 0 '' -- "$PY $TOP/tests/tools/check_shard_pixels.py $T/s3/shard-00000.tsz $T/tree/dog/rocket.jpg 64 1.5"

# --- flat folder with a label file, and a file list
mkdir -p "$T/flat"
cp "$PHOTOS/coffee.png" "$T/flat/b.png"; cp "$PHOTOS/rocket.jpg" "$T/flat/a.jpg"; cp "$PHOTOS/chelsea.png" "$T/flat/c.png"
printf 'a.jpg 2\nb.png 0\nc.png 1\n' >"$T/flat.labels"
expect flat_folder_with_labels 0 '' -- "$S -q --out $T/s4 --labels $T/flat.labels $T/flat"
check flat_folder_labels_by_name "[ \"\$(index \"x['class_counts']\" $T/s4)\" = '[1, 1, 1]' ]"
printf '%s\t%s\n' "$T/flat/a.jpg" dog "$T/flat/b.png" cat "$T/flat/c.png" cat >"$T/list.tsv"
expect file_list_with_class_names 0 '' -- "$S -q --out $T/s5 $T/list.tsv"
check file_list_classes "[ \"\$(index \"x['classes'], x['class_counts']\" $T/s5)\" = \"(['cat', 'dog'], [2, 1])\" ]"
printf 'dog\ncat\nbird\n' >"$T/classes.txt"
expect fixed_classes_file 0 '' -- "$S -q --out $T/s6 --classes $T/classes.txt $T/list.tsv"
check fixed_classes_keep_their_order "[ \"\$(index \"x['classes'], x['class_counts']\" $T/s6)\" = \"(['dog', 'cat', 'bird'], [1, 2, 0])\" ]"
printf 'dog\n' >"$T/classes1.txt"
expect unknown_class_is_an_error 1 "class 'cat' is not in the classes file" -- "$S -q --out $T/s7 --classes $T/classes1.txt $T/list.tsv"

# --- IDX (made here: 30 images 5x4, labels 0..2), gzipped, raw store, grey kept
$PY - "$T" <<'PY'
import gzip, struct, sys
t = sys.argv[1]
imgs = bytes((i * 7 + k) % 256 for i in range(30) for k in range(20))
open(t + "/small-images-idx3-ubyte", "wb").write(struct.pack(">IIII", 0x803, 30, 5, 4) + imgs)
gzip.open(t + "/small-labels-idx1-ubyte.gz", "wb").write(struct.pack(">II", 0x801, 30) + bytes(i % 3 for i in range(30)))
gzip.open(t + "/small-images-idx3-ubyte.gz", "wb").write(struct.pack(">IIII", 0x803, 30, 5, 4) + imgs)
open(t + "/bad-images-idx3-ubyte", "wb").write(struct.pack(">IIII", 0x803, 30, 5, 4) + imgs[:100])
PY
expect idx_gz_with_companion_labels 0 '' -- "$S -q --out $T/s8 --shard-size 7 $T/small-images-idx3-ubyte.gz"
check idx_is_raw_grey_and_labelled "[ \"\$(index \"x['options']['store'], x['options']['channels'], x['class_counts'], len(x['shards'])\" $T/s8)\" = \"('raw', 1, [10, 10, 10], 5)\" ]"
expect idx_values_are_the_file_bytes 0 '' -- "$I --values image --record 2 $T/s8/shard-00000.tsz"
check idx_second_image_bytes "[ \"\$(tr '\n' ' ' <$T/out)\" = '7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 ' ]"
expect idx_to_rgb_when_asked 0 '' -- "$S -q --out $T/s9 --channels 3 --labels $T/small-labels-idx1-ubyte.gz $T/small-images-idx3-ubyte"
expect truncated_idx_is_an_error 1 'bad-images-idx3-ubyte: truncated IDX data' -- "$S -q --out $T/s10 $T/bad-images-idx3-ubyte"
expect idx_labels_as_input_says_to_give_the_images 1 'small-labels-idx1-ubyte.gz: an IDX file of rank 1 .*: give the images file' -- \
    "$S -q --out $T/s11 $T/small-labels-idx1-ubyte.gz"

# --- archives: class folders in a tar.gz, ImageNet's tar of tars, WebDataset
(cd "$T/tree" && tar -czf "$T/tree.tar.gz" cat dog bird)
expect tar_gz_of_class_folders 3 'dog/zz-truncated.jpg: truncated JPEG' -- "$S -q --out $T/s11 $T/tree.tar.gz"
check tar_classes_and_counts "[ \"\$(index \"x['classes'], x['class_counts']\" $T/s11)\" = \"(['bird', 'cat', 'dog'], [1, 3, 2])\" ]"
mkdir -p "$T/inner"
(cd "$T/tree/cat" && tar -cf "$T/inner/n0001.tar" chelsea.png coffee.png sub)
(cd "$T/tree/dog" && tar -cf "$T/inner/n0002.tar" flower.jpg rocket.jpg)
(cd "$T/inner" && tar -cf "$T/train.tar" n0001.tar n0002.tar)
expect imagenet_style_tar_of_tars 0 '' -- "$S -q --out $T/s12 --shuffle --seed 3 --shard-size 2 $T/train.tar"
check tar_of_tars_classes "[ \"\$(index \"x['classes'], x['class_counts']\" $T/s12)\" = \"(['n0001', 'n0002'], [3, 2])\" ]"
mkdir -p "$T/wds"
cp "$PHOTOS/rocket.jpg" "$T/wds/000.jpg"; echo 4 >"$T/wds/000.cls"
cp "$PHOTOS/coffee.png" "$T/wds/001.png"; echo 1 >"$T/wds/001.cls"
(cd "$T/wds" && tar -cf "$T/wds.tar" 000.jpg 000.cls 001.cls 001.png)
expect webdataset_tar 0 '' -- "$S -q --out $T/s13 $T/wds.tar"
check webdataset_labels "[ \"\$(index \"x['class_counts']\" $T/s13)\" = '[0, 1, 0, 0, 1]' ]"
expect archive_members_never_touch_disk 0 '' -- "[ ! -e $T/s12/n0001.tar ] && [ ! -e chelsea.png ]"

# --- determinism: same seed, any thread count, any part split
expect shuffled_with_one_thread 3 '' -- "$S -q --out $T/t1 --shuffle --seed 9 --shard-size 2 --threads 1 $T/tree"
expect shuffled_with_three_threads 3 '' -- "$S -q --out $T/t3 --shuffle --seed 9 --shard-size 2 --threads 3 $T/tree"
DIGEST=$TOP/tests/tools/stream_digest.py
check same_shards_whatever_threads "[ \"\$($PY $DIGEST $T/t1/shard-*.tsz)\" = \"\$($PY $DIGEST $T/t3/shard-*.tsz)\" ]"
# the truncated JPEG falls in one of the two parts: that part exits 3, the other 0
expect part_0_of_2 0 '' -- "$S -q --out $T/p --shuffle --seed 9 --shard-size 2 --part 0/2 $T/tree || [ \$? -eq 3 ]"
expect part_1_of_2 0 '' -- "$S -q --out $T/p --shuffle --seed 9 --shard-size 2 --part 1/2 $T/tree || [ \$? -eq 3 ]"
check parts_make_the_same_shards "[ \"\$($PY $DIGEST $T/t1/shard-*.tsz)\" = \"\$($PY $DIGEST $T/p/shard-*.tsz)\" ] && [ -f $T/p/index-0000-of-0002.json ] && [ -f $T/p/index-0001-of-0002.json ]"
expect different_seed_different_order 3 '' -- "$S -q --out $T/t4 --shuffle --seed 10 --shard-size 2 $T/tree"
check different_seed_changes_shards "[ \"\$($PY $DIGEST $T/t1/shard-*.tsz)\" != \"\$($PY $DIGEST $T/t4/shard-*.tsz)\" ]"
expect byte_sized_shards 3 '' -- "$S -q --out $T/b --shard-size 300K $T/tree"
check byte_sized_shards_are_cut "[ \$(ls $T/b/shard-*.tsz | wc -l) -ge 2 ]"

# --- hostile and wrong input
$PY - "$T" <<'PY'
import struct, sys, zlib
t = sys.argv[1]
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
open(t + "/flat2.png", "wb").write(png)
PY
mkdir -p "$T/hostile/x" && cp "$T/flat2.png" "$T/hostile/x/big.png" && cp "$PHOTOS/coffee.png" "$T/hostile/x/ok.png"
expect hostile_dims_are_skipped 3 'big.png: .*(exceeds the limit|too large|limit)' -- "$S -q --out $T/h $T/hostile"
expect missing_input_is_an_error 1 'nope: No such file' -- "$S -q --out $T/m $T/nope"
expect empty_folder_is_an_error 1 'no images found' -- "mkdir -p $T/empty && $S -q --out $T/e $T/empty"
expect out_is_required 2 '--out DIR is required' -- "$S $T/tree"
expect bad_part_is_usage_error 2 "--part: '2/2' is not I/N" -- "$S --out $T/x --part 2/2 $T/tree"
expect bytes_with_parts_is_usage_error 2 'cannot be combined with --part' -- "$S --out $T/x --shard-size 1M --part 0/2 $T/tree"
expect help_has_an_example 0 '' -- "$S --help | grep -q 'moco-shard --out'"
