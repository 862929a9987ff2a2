# t0950-demo-example.sh — examples/fashion-mnist/Makefile (make demo) end to end on another dataset:
# DATA= an image folder with train/ and test/ class folders made from ../shared/data/photos, a tiny
# network, two epochs. Every stage runs; the table, the reports, the loss plot and the sheets appear.
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
mkdir -p "$T/data/train/cats" "$T/data/train/dogs" "$T/data/test/cats" "$T/data/test/dogs"
i=0
for r in 1 2 3 4; do
    for f in "$PHOTOS"/*.jpg "$PHOTOS"/*.png; do
        case $f in *truncated*) continue ;; esac
        i=$((i + 1))
        c=$([ $((i % 2)) = 0 ] && echo cats || echo dogs)
        cp "$f" "$T/data/train/$c/$i.${f##*.}"
        [ $r = 1 ] && cp "$f" "$T/data/test/$c/$i.${f##*.}"
    done
done
TINY='--arch resnet18 --cifar-stem --width 4 --dim 16 --queue 32 --momentum-key 0.99 --bn-groups 2 --batch 8 --lr 0.06 --wd 5e-4'
expect demo_runs_on_an_image_folder 0 '' -- "make -s -C $TOP/examples/fashion-mnist BIN=$BUILD/bin DATA=$T/data OUT=$T/demo EPOCHS=2 THREADS=2 MODEL='$TINY' >$T/demo.out 2>$T/demo.err || { cat $T/demo.err >&2; exit 1; }"
check table_names_the_three_probes "grep -q 'train 40, test 10' $T/demo.out && grep -q 'MoCo v2 pretrained, 2 epochs' $T/demo.out && grep -q 'random-init encoder' $T/demo.out && grep -q 'raw pixels' $T/demo.out && grep -q 'pretrain ' $T/demo.out"
check reports_and_pictures "for f in report-moco.json report-random.json report-raw.json loss.svg pairs-sheet.png train-sheet.png run/last.tsz; do [ -s $T/demo/\$f ] || exit 1; done"
check loss_plot_is_svg "grep -q '<polyline' $T/demo/loss.svg && grep -q '</svg>' $T/demo/loss.svg"
check classes_from_the_folders "[ \"\$(cat $T/demo/classes.txt | tr '\n' ' ')\" = 'cats dogs ' ]"
expect second_run_has_nothing_to_do 0 '' -- "make -s -C $TOP/examples/fashion-mnist BIN=$BUILD/bin DATA=$T/data OUT=$T/demo EPOCHS=2 MODEL='$TINY' | grep -q 'linear probe on'"
expect missing_data_says_what_to_do 2 'neither Fashion-MNIST.s IDX files nor train/ and test/ folders' -- "make -s -C $TOP/examples/fashion-mnist BIN=$BUILD/bin DATA=$T/nothing OUT=$T/demo2"
