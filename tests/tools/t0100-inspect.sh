# t0100-inspect.sh — moco-inspect on real photos and on every kind of bad stream.
. "$(dirname "$0")/lib.sh"
I=$BIN/moco-inspect
MK=$HELPERS/mkstream

$MK --classes rocket,astro "$PHOTOS/astronaut.png" "$PHOTOS/coffee.png" "$PHOTOS/chelsea.png" >"$T/photos.tsz"
$MK --records 40 --level 0 >"$T/raw.tsz"
$MK --records 40 --level -5 >"$T/fast.tsz"
$MK --views --records 6 >"$T/views.tsz"

expect inspect_summarises_photos 0 '' -- "$I $T/photos.tsz"
check inspect_summary_names_kind_records_and_shapes \
    "grep -q 'images stream from mkstream' $T/out && grep -q '3 records' $T/out && grep -q 'u8\[300..512,451..600,3\]' $T/out && grep -q '0(rocket)=2 1(astro)=1' $T/out"
expect inspect_header_is_json 0 '' -- "$I --header $T/photos.tsz"
check inspect_header_parses_as_json "/usr/bin/python3 -c 'import json,sys; h=json.load(open(\"$T/out\")); assert h[\"kind\"]==\"images\" and h[\"classes\"]==[\"rocket\",\"astro\"]'"
expect inspect_head_lists_records 0 '' -- "$I --head 2 $T/photos.tsz"
check inspect_head_prints_two_lines "[ \$(wc -l <$T/out) -eq 2 ] && grep -q 'record 2: sample 1, label 1 (astro): image u8\[400,600,3\]' $T/out"
expect inspect_values_prints_a_tensor 0 '' -- "$I --values feat --record 3 $T/raw.tsz"
check inspect_values_are_exact "[ \"\$(cat $T/out)\" = '2 2.5 3 3.5' ]"
expect inspect_values_of_missing_tensor_fails 1 "record 1 has no tensor 'nope'" -- "$I --values nope $T/raw.tsz"
expect inspect_values_beyond_the_end_fails 1 'no record 99 \(the stream has 40\)' -- "$I --values feat --record 99 $T/raw.tsz"
expect inspect_json_summary 0 '' -- "$I --json $T/fast.tsz"
check inspect_json_summary_parses "/usr/bin/python3 -c 'import json; s=json.load(open(\"$T/out\")); assert s[\"records\"]==40 and s[\"encoding\"]==\"zstd\" and s[\"labels\"][\"0\"]==14'"

expect inspect_draws_contact_sheet 0 '3 images drawn' -- "$I --png $T/sheet.png $T/photos.tsz"
check contact_sheet_is_a_png "[ \"\$(head -c 8 $T/sheet.png | od -An -tx1 | tr -d ' \n')\" = 89504e470d0a1a0a ]"
check contact_sheet_has_the_grid_size "/usr/bin/python3 -c 'from PIL import Image; im=Image.open(\"$T/sheet.png\"); assert im.size==(262,262), im.size'"
expect inspect_draws_both_views_of_pairs 0 '12 images drawn' -- "$I --png $T/views.png --tile 32 $T/views.tsz"
expect inspect_refuses_to_draw_features 1 "tensor 'feat' is not an image" -- "$I --png $T/x.png --tensor feat $T/raw.tsz"

expect reads_stdin_and_concatenation 0 '' -- "cat $T/raw.tsz $T/fast.tsz $T/raw.tsz | $I"
check concatenation_counts_every_part "grep -q '3 parts, 120 records' $T/out"
expect zstd_tools_read_our_files 0 '' -- "zstd -qt $T/fast.tsz && zstdcat $T/fast.tsz | $I -q"
expect zstd_recompressed_stream_still_reads 0 '' -- "zstd -qdc $T/fast.tsz | zstd -q -19 | $I -q"

cp "$T/raw.tsz" "$T/flipped.tsz"
printf '\377' | dd of="$T/flipped.tsz" bs=1 seek=1000 conv=notrunc 2>/dev/null
expect flipped_byte_names_file_and_record 1 'moco-inspect: .*flipped.tsz: record [0-9]+: (checksum mismatch|corrupt record header)' -- "$I $T/flipped.tsz"
head -c 1000 "$T/raw.tsz" >"$T/cut.tsz"
expect truncated_stream_is_an_error 1 'cut.tsz: record [0-9]+: truncated' -- "$I $T/cut.tsz"
$MK --records 5 --level 0 --no-end >"$T/killed.tsz"
expect killed_writer_is_detected 1 'truncated stream: it ends after record 5 without an end record' -- "$I $T/killed.tsz"
head -c 3000 "$T/fast.tsz" >"$T/cutz.tsz"
expect truncated_zstd_is_an_error 1 'cutz.tsz: record [0-9]+: truncated' -- "$I $T/cutz.tsz"
expect foreign_file_is_refused 1 'not a tensor stream \(it starts with bytes 89 50 4e 47\)' -- "$I $PHOTOS/astronaut.png"
expect empty_input_is_refused 1 'empty input' -- "$I </dev/null"
expect missing_file_is_reported 1 'nope.tsz: cannot open: No such file' -- "$I $T/nope.tsz"
expect record_limit_is_enforced 1 'exceeds the limit of 100000 bytes' -- "$I --max-record 100000 $T/photos.tsz"
$MK --kind features --records 2 >"$T/feat.tsz"
expect mixed_kinds_cannot_concatenate 1 "part 2 is a 'features' stream but part 1 is 'images'" -- "cat $T/raw.tsz $T/feat.tsz | $I"

expect help_exits_zero 0 '' -- "$I --help | grep -q 'Usage: moco-inspect'"
expect version_exits_zero 0 '' -- "$I --version | grep -q 'moco-inspect (moco) '"
expect unknown_option_is_usage_error 2 "Try 'moco-inspect --help'" -- "$I --frobnicate"
expect bad_number_is_usage_error 2 "--head: 'x' is not an integer" -- "$I --head x"
expect closed_stdout_ends_quietly 0 EMPTY -- "$I --head 40 $T/raw.tsz | head -n 1"
