# t1000-voc-eval.sh — moco-voc-eval on a generated VOC tree, checked against an independent numpy
# reference (voc_reference.py), through result files and streams, and on every kind of bad input.
. "$(dirname "$0")/lib.sh"
V=$BIN/moco-voc-eval
PY=/usr/bin/python3
REF=$TOP/tests/tools/voc_reference.py

$PY "$TOP/tests/tools/make_voc_case.py" "$T/case" --seed 7
D=$T/case/VOC2007
R=$T/case/results/

# Same numbers, to 1e-6 (in practice bit for bit), as the reference; the table names every class.
expect voc_eval_scores_result_files 0 EMPTY -- "$V --devkit $D --results $R --report $T/r11.json"
check voc_eval_prints_a_row_per_class_and_a_summary \
    "[ \$(grep -c . $T/out) -eq 24 ] && grep -q '^tvmonitor ' $T/out && grep -Eq '^AP [0-9]+\.[0-9]{4} AP50 [0-9.]+ AP75 [0-9.]+\$' $T/out"
expect voc_eval_11point_matches_reference 0 '' -- "$PY $REF $D $R --compare $T/r11.json"
expect voc_eval_area_metric 0 EMPTY -- "$V $D --results $R --metric area --report $T/area.json -q"
check quiet_prints_no_table "[ ! -s $T/out ]"
expect voc_eval_area_matches_reference 0 '' -- "$PY $REF $D $R --metric area --compare $T/area.json"

same_numbers() { # two reports hold the same AP, AP50, AP75 and APs of the 20 evaluated classes, bit for bit
    $PY -c 'import json,sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert [a[k] for k in ("AP", "AP50", "AP75")] == [b[k] for k in ("AP", "AP50", "AP75")]
ap = lambda r: {c["name"]: c["ap"] for c in r["classes"] if c["evaluated"]}
assert ap(a) == ap(b) and len(ap(a)) == 20' "$1" "$2"
}
expect year_2012_uses_the_area 0 '' -- "$V $D --results $R --year 2012 --report - >$T/y2012.json"
check year_2012_report_equals_area_report "same_numbers $T/y2012.json $T/area.json"
check report_says_metric_and_set "grep -q '\"metric\": \"area\"' $T/y2012.json && grep -q '\"set\": \"test\"' $T/y2012.json"
expect devkit_root_finds_the_VOC2007_folder 0 EMPTY -- "$V $T/case --results $R -q --report $T/root.json"
check devkit_root_gives_the_same_numbers "same_numbers $T/root.json $T/r11.json"

# The stream path: result files converted to a detections stream and evaluated again.
expect write_stream_converts_result_files 0 EMPTY -- "$V $D --results $R -q --write-stream $T/det.tsz"
expect written_stream_is_a_whole_detections_stream 0 '' -- "$BIN/moco-inspect $T/det.tsz"
check inspect_sees_boxes_scores_classes \
    "grep -q 'detections stream from moco-voc-eval' $T/out && grep -q 'boxes .*f32\[.*,4\]' $T/out && grep -q 'classes .*i64' $T/out"
expect stream_input_is_evaluated 0 EMPTY -- "$V $D --detections $T/det.tsz -q --report $T/stream.json"
check stream_gives_the_result_files_numbers "same_numbers $T/stream.json $T/r11.json"
expect stream_from_stdin 0 EMPTY -- "cat $T/det.tsz | $V $D --detections - -q --report $T/stdin.json"
check stdin_stream_gives_the_same_numbers "same_numbers $T/stdin.json $T/r11.json"
expect stream_through_a_pipe 0 EMPTY -- "$V $D --results $R --write-stream - | $V $D --detections - -q --report $T/pipe.json"
check piped_stream_gives_the_same_numbers "same_numbers $T/pipe.json $T/r11.json"
expect stream_matches_reference 0 '' -- "$PY $REF $D $R --compare $T/stream.json"

# Classes: a list with one class no image has is an error, unless --skip-empty leaves it out.
printf '%s\n' '# the VOC classes and one more' aeroplane bicycle bird boat bottle bus car cat chair cow diningtable \
    dog horse motorbike person pottedplant sheep sofa train tvmonitor zebra >"$T/classes.txt"
: >"$T/case/results/zebra.txt"
expect class_without_positives_is_an_error 1 "class 'zebra' has no positive .*--skip-empty" -- "$V $D --results $R --classes $T/classes.txt"
expect skip_empty_leaves_it_out 0 "warning: class 'zebra' has no positives in the set: left out" -- \
    "$V $D --results $R --classes $T/classes.txt --skip-empty --report $T/zebra.json"
check skipped_class_shows_a_dash "grep -Eq '^zebra +0 +0 +0 +- +- +-\$' $T/out"
check skipped_class_leaves_the_means_alone "same_numbers $T/zebra.json $T/r11.json"

# Bad ground truth: each names the file and line.
bad_tree() { rm -rf "$T/bad" && cp -r "$D" "$T/bad"; }
bad_tree; sed -i '$d' "$T/bad/Annotations/000001.xml"; sed -i '$d' "$T/bad/Annotations/000001.xml"
expect malformed_xml_names_file_and_line 1 'moco-voc-eval: .*bad/Annotations/000001.xml: line [0-9]+: malformed XML: no element found' -- "$V $T/bad --results $R"
bad_tree; rm "$T/bad/Annotations/000003.xml"
expect missing_xml_is_an_error 1 'Annotations/000003.xml: cannot open: No such file or directory' -- "$V $T/bad --results $R"
bad_tree; sed -i '0,/<name>[a-z]*<\/name>/s//<name>zebra<\/name>/' "$T/bad/Annotations/000005.xml"
expect unknown_class_in_xml_is_an_error 1 "000005.xml: line [0-9]+: unknown class 'zebra' \(not one of the 20 classes" -- "$V $T/bad --results $R"
bad_tree; sed -i '0,/<xmax>[0-9]*<\/xmax>/s//<xmax>0<\/xmax>/' "$T/bad/Annotations/000007.xml"
expect ground_truth_xmax_below_xmin_is_an_error 1 "000007.xml: line [0-9]+: box of '.*' has xmax < xmin" -- "$V $T/bad --results $R"
bad_tree; sed -i '0,/<ymin>[0-9]*<\/ymin>/s//<ymin>12.5<\/ymin>/' "$T/bad/Annotations/000009.xml"
expect fractional_coordinate_is_an_error 1 "000009.xml: line [0-9]+: <ymin> '12.5' is not an integer" -- "$V $T/bad --results $R"
bad_tree; echo "000001 ; rm -rf /" >>"$T/bad/ImageSets/Main/test.txt"
expect bad_image_set_line_is_an_error 1 "test.txt: line 61: '000001 ; rm -rf /' is not an image id" -- "$V $T/bad --results $R"

# Bad detections: each names the file and line (or record).
bad_results() { rm -rf "$T/res" && cp -r "$T/case/results" "$T/res"; printf '\n%s\n' "$1" >>"$T/res/person.txt"; }
bad_results "000001 0.500 50.0 10.0 40.0 20.0"
expect detection_xmax_below_xmin_is_an_error 1 'res/person.txt: line [0-9]+: xmax < xmin' -- "$V $D --results $T/res/"
bad_results "000001 nan 10.0 10.0 40.0 20.0"
expect nan_score_is_an_error 1 'res/person.txt: line [0-9]+: score is NaN' -- "$V $D --results $T/res/"
bad_results "000001 0.5 10.0 10.0 40.0"
expect short_line_is_an_error 1 'res/person.txt: line [0-9]+: 5 fields, want 6' -- "$V $D --results $T/res/"
bad_results "999999 0.500 10.0 10.0 40.0 20.0"
expect unknown_image_id_is_skipped_with_a_warning 0 \
    "warning: 1 detection of images not in .*test.txt skipped \(first: .*res/person.txt: line [0-9]+: image id '999999'; --strict to stop\)" -- \
    "$V $D --results $T/res/ --report $T/skip.json"
check skipped_detection_changes_nothing "same_numbers $T/skip.json $T/r11.json"
expect strict_refuses_unknown_image_id 1 "res/person.txt: line [0-9]+: image id '999999' is not in the image set" -- "$V $D --results $T/res/ --strict"
rm "$T/res/sofa.txt"
expect missing_result_file_is_an_error 1 'res/sofa.txt: cannot open: No such file or directory' -- "$V $D --results $T/res/"

$HELPERS/mkstream --records 2 >"$T/images.tsz"
expect other_stream_kind_is_refused 1 "images.tsz: a 'images' stream, not detections" -- "$V $D --detections $T/images.tsz"
head -c 2000 "$T/det.tsz" >"$T/cut.tsz"
expect truncated_stream_is_an_error 1 'cut.tsz: record [0-9]+: truncated' -- "$V $D --detections $T/cut.tsz"
expect missing_stream_is_an_error 1 'nope.tsz: cannot open' -- "$V $D --detections $T/nope.tsz"

expect help_exits_zero 0 EMPTY -- "$V --help | grep -q 'Usage: moco-voc-eval'"
expect help_has_an_example 0 EMPTY -- "$V --help | grep -q 'moco-voc-eval --devkit VOCdevkit/VOC2007 --results'"
expect version_exits_zero 0 EMPTY -- "$V --version | grep -q 'moco-voc-eval (moco) '"
expect no_devkit_is_a_usage_error 2 'no devkit directory' -- "$V --results $R"
expect no_detections_is_a_usage_error 2 'either --results PREFIX or --detections FILE' -- "$V $D"
expect both_detection_sources_is_a_usage_error 2 'either --results' -- "$V $D --results $R --detections $T/det.tsz"
expect bad_year_is_a_usage_error 2 "--year: '2005' is not an integer in 2007..2012" -- "$V $D --results $R --year 2005"
expect bad_metric_is_a_usage_error 2 "--metric: 'auc' is not 11point or area" -- "$V $D --results $R --metric auc"
expect two_outputs_on_stdout_is_a_usage_error 2 'cannot both have standard output' -- "$V $D --results $R --write-stream - --report -"
expect unknown_option_is_a_usage_error 2 "Try 'moco-voc-eval --help'" -- "$V --frobnicate"
expect missing_set_is_an_error 1 'ImageSets/Main/val.txt: cannot open' -- "$V $D --results $R --set val"
