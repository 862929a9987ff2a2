# t0600-pretrain.sh — moco-pretrain on real views: checkpoints, metrics, exact resume after SIGKILL
# and SIGTERM, NaN stop, bad input. A tiny model (ResNet-18, width 4, CIFAR stem, 16 px) keeps it fast.
. "$(dirname "$0")/lib.sh"
S=$BIN/moco-shard
A=$BIN/moco-augment
P=$BIN/moco-pretrain
I=$BIN/moco-inspect
PY=/usr/bin/python3
DIGEST=$TOP/tests/tools/stream_digest.py
digest() { $PY $DIGEST "$1" | cut -d' ' -f2; }
MODEL="--arch resnet18 --cifar-stem --width 4 --dim 16 --queue 64 --momentum-key 0.99 --bn-groups 2 --batch 32 --lr 0.06 --wd 5e-4 --threads 2"
AUG="--size 16 --scale 0.2,1 --jitter 0.4,0.4,0,0 --grayscale 0 --blur 0 --threads 2"

# 256 Fashion-MNIST images (the first of the test set) as a small IDX file, then shards and 3 epochs
# of pairs: 8 steps of 32 pairs per epoch.
fmnist_head 256 "$T/small-idx3-ubyte"
$S -q --out "$T/shards" "$T/small-idx3-ubyte"
$A -q $AUG --epochs 3 --level 0 -o "$T/pairs.tsz" "$T/shards"

expect trains_three_epochs 0 '' -- "$P -q $MODEL --out $T/a --save-every 1 --log $T/a.jsonl --log-every 1 $T/pairs.tsz"
check checkpoint_per_epoch_and_last "[ -f $T/a/ckpt-0001.tsz ] && [ -f $T/a/ckpt-0002.tsz ] && [ -f $T/a/ckpt-0003.tsz ] && [ -f $T/a/last.tsz ]"
check no_temporary_files_left "[ -z \"\$(ls $T/a | grep -v '\\.tsz\$')\" ]"
check last_is_the_final_epoch "[ \"\$(digest $T/a/last.tsz)\" = \"\$(digest $T/a/ckpt-0003.tsz)\" ]"
check metrics_one_line_per_step "[ \$(wc -l <$T/a.jsonl) -eq 24 ]"
check metrics_fields "$PY -c '
import json, math
rows = [json.loads(l) for l in open(\"$T/a.jsonl\")]
assert [r[\"step\"] for r in rows] == list(range(1, 25))
for r in rows:
    assert all(k in r for k in (\"epoch\", \"loss\", \"acc1\", \"acc5\", \"lr\", \"pairs_per_s\", \"data_wait\"))
    assert math.isfinite(r[\"loss\"]) and 0 <= r[\"acc1\"] <= r[\"acc5\"] <= 100 and 0 <= r[\"data_wait\"] <= 1
assert abs(rows[0][\"lr\"] - 0.06 * 32 / 256) < 1e-12           # lr scaled by batch / 256
assert abs(rows[-1][\"lr\"] - 0.0075 * 0.5 * (1 + math.cos(math.pi * 2 / 3))) < 1e-12  # cosine, epoch 2 of 3
'"
expect checkpoint_is_a_stream 0 '' -- "$I --header $T/a/last.tsz"
check checkpoint_header "$PY -c '
import json; h = json.load(open(\"$T/out\"))
assert h[\"kind\"] == \"checkpoint\" and h[\"arch\"] == \"resnet18\" and h[\"step\"] == 24 and h[\"samples_consumed\"] == 768
assert h[\"width\"] == 4 and h[\"in_channels\"] == 1 and h[\"cifar_stem\"] == 1 and h[\"queue_ptr\"] == (24 * 32) % 64
'"
expect checkpoint_names_are_torchvision_s 0 '' -- "$I --head 1000 $T/a/last.tsz"
check checkpoint_tensors "grep -q 'encoder_q.conv1.weight' $T/out && grep -q 'encoder_q.layer4.1.bn2.running_var' $T/out && grep -q 'encoder_q.fc.2.weight' $T/out && grep -q 'encoder_k.fc.0.bias' $T/out && grep -q 'momentum_buffer.layer1.0.conv1.weight' $T/out && grep -q 'queue' $T/out && grep -q 'encoder_q.bn1.num_batches_tracked' $T/out"
expect same_run_same_bytes 0 '' -- "$P -q $MODEL --out $T/a2 --save-every 0 $T/pairs.tsz"
check deterministic_with_seed "[ \"\$(digest $T/a/last.tsz)\" = \"\$(digest $T/a2/last.tsz)\" ]"
# --direct-conv: layer4's 32-channel convolutions without Winograd: other rounding, the same loss
# to ~1e-5 over three steps
expect direct_conv_trains 0 '' -- "$P -q $MODEL --max-steps 3 --out $T/w --log $T/w.jsonl --log-every 1 $T/pairs.tsz && $P -q $MODEL --direct-conv --max-steps 3 --out $T/d --log $T/d.jsonl --log-every 1 $T/pairs.tsz"
check direct_conv_rounds_otherwise "[ \"\$(digest $T/w/last.tsz)\" != \"\$(digest $T/d/last.tsz)\" ]"
check direct_conv_same_loss "$PY -c '
import json, sys
w = [json.loads(l)[\"loss\"] for l in open(\"$T/w.jsonl\")]
d = [json.loads(l)[\"loss\"] for l in open(\"$T/d.jsonl\")]
assert len(w) == len(d) == 3 and max(abs(a - b) for a, b in zip(w, d)) < 1e-3, (w, d)
'"

# SIGKILL mid-epoch: the input stalls after ~10 steps (a pipe fed 45% of the file), the run is
# killed there, resumed from its epoch-1 checkpoint on the whole file, and must end bit-exact.
stall_then() { # out_dir signal
    size=$(wc -c <"$T/pairs.tsz")
    mkfifo "$T/fifo.$1"
    ( head -c $((size * 45 / 100)) "$T/pairs.tsz"; sleep 60 ) >"$T/fifo.$1" &
    feeder=$!
    $P -q $MODEL --out "$T/$1" --save-every 1 --log "$T/$1.jsonl" --log-every 1 "$T/fifo.$1" 2>"$T/$1.err" &
    pid=$!
    for _ in $(seq 300); do
        grep -q '"step":10,' "$T/$1.jsonl" 2>/dev/null && break
        sleep 0.1
    done
    sleep 0.3
    kill -"$2" $pid
    wait $pid 2>/dev/null
    echo $? >"$T/$1.status"
    { kill $feeder; pkill -P $feeder sleep; wait $feeder; } 2>/dev/null
}
stall_then b KILL
check killed_mid_epoch "[ \$(cat $T/b.status) -eq 137 ] && [ -f $T/b/ckpt-0001.tsz ] && [ ! -f $T/b/ckpt-0002.tsz ]"
expect resumes_after_sigkill 0 '' -- "$P -q $MODEL --out $T/b --save-every 1 --resume $T/b $T/pairs.tsz"
check sigkill_resume_is_bit_exact "[ \"\$(digest $T/a/last.tsz)\" = \"\$(digest $T/b/last.tsz)\" ]"
# the same resume with moco-augment starting at epoch 1, so trained epochs are not augmented again
cp -r "$T/b" "$T/b2" && ln -sf ckpt-0001.tsz "$T/b2/last.tsz"
expect resumes_from_a_later_epoch_stream 0 '' -- "$A -q $AUG --epochs 3 --first-epoch 1 --level 0 $T/shards | $P -q $MODEL --out $T/b2 --save-every 1 --resume $T/b2/ckpt-0001.tsz"
check first_epoch_resume_is_bit_exact "[ \"\$(digest $T/a/last.tsz)\" = \"\$(digest $T/b2/last.tsz)\" ]"

# SIGTERM mid-epoch: saved where it stopped (exit 143), and resuming from there is exact too.
stall_then c TERM
check sigterm_saves_and_exits_143 "[ \$(cat $T/c.status) -eq 143 ] && grep -q 'stopped by signal 15' $T/c.err && [ -f $T/c/last.tsz ]"
check sigterm_checkpoint_is_mid_epoch "$I --header $T/c/last.tsz | $PY -c 'import json,sys; h=json.load(sys.stdin); assert h[\"step\"] >= 10 and h[\"step\"] % 8'"
expect resumes_after_sigterm 0 '' -- "$P -q $MODEL --out $T/c --save-every 1 --resume $T/c $T/pairs.tsz"
check sigterm_resume_is_bit_exact "[ \"\$(digest $T/a/last.tsz)\" = \"\$(digest $T/c/last.tsz)\" ]"

# A save that fails (a file-size limit: what a full disk gives, EFBIG instead of ENOSPC) stops the
# run with an error and leaves the previous checkpoint whole, with no temporary file behind.
cp -r "$T/a" "$T/full"
before=$(digest "$T/full/last.tsz")
expect failed_save_is_an_error 1 'ckpt-0003.tsz' -- "trap '' XFSZ; ulimit -f 64; $P -q $MODEL --out $T/full --save-every 1 --resume $T/full/ckpt-0002.tsz $T/pairs.tsz"
check failed_save_keeps_the_previous_checkpoint "[ \"\$(digest $T/full/last.tsz)\" = \"$before\" ] && [ -z \"\$(ls $T/full | grep -v '^ckpt-000[123]\.tsz\$' | grep -v '^last\.tsz\$')\" ]"

# Failures: a NaN loss stops the run naming the step; bad inputs and options are refused.
expect nan_loss_stops_the_run 1 'step [0-9]+ \(epoch [0-9]+\): the loss is (nan|inf|-nan)' -- "$P -q $MODEL --lr 1e6 --wd 1 --momentum 0 --out $T/nan $T/pairs.tsz"
check nan_run_leaves_no_partial_checkpoint "[ -z \"\$(ls $T/nan | grep -v '^ckpt-[0-9]*\\.tsz\$' | grep -v '^last\\.tsz\$')\" ]"
expect refuses_a_shard_stream 1 'a "images" stream; moco-pretrain reads view pairs' -- "cat $T/shards/shard-00000.tsz | $P -q $MODEL --out $T/x"
expect refuses_single_views 1 '1 view\(s\) per sample; MoCo needs pairs' -- "$A -q --recipe eval --size 16 --resize 16 $T/shards | $P -q $MODEL --out $T/x"
expect refuses_wrong_channels 1 'views have 1 channel\(s\), the encoder takes 3' -- "$P -q $MODEL --in-channels 3 --out $T/x $T/pairs.tsz"
expect refuses_truncated_input 1 'cut.tsz: record [0-9]+: truncated' -- "head -c 300000 $T/pairs.tsz >$T/cut.tsz; $P -q $MODEL --out $T/x $T/cut.tsz"
expect needs_out 2 '--out DIR is required' -- "$P -q $MODEL $T/pairs.tsz"
expect batch_must_split_into_groups 2 'does not split into --bn-groups' -- "$P -q $MODEL --batch 33 --out $T/x $T/pairs.tsz"
# --device cuda: without a CUDA backend to load (a CPU-only build), or with one but no GPU here, a
# clear failure (no crash, nothing saved)
$P -q $MODEL --device cuda --out $T/x $T/pairs.tsz 2>"$T/cuda.err"
echo $? >"$T/cuda.rc"
check cuda_without_a_gpu_is_a_clear_error "[ \$(cat $T/cuda.rc) = 1 ] && grep -Eq 'cuda:0: no such device|no CUDA backend to load' $T/cuda.err && [ ! -e $T/x/last.tsz ]"
expect device_must_be_cpu_or_cuda 2 'expected cpu, cuda or cuda:N' -- "$P -q $MODEL --device tpu --out $T/x $T/pairs.tsz"
expect precision_is_bf16_or_f32 2 'expected bf16 or f32' -- "$P -q $MODEL --precision f16 --out $T/x $T/pairs.tsz"
expect resume_from_nothing 1 'missing' -- "$P -q $MODEL --out $T/x --resume $T/missing.tsz $T/pairs.tsz"
expect max_steps_0_saves_the_initialisation 0 '' -- "$P -q $MODEL --max-steps 0 --out $T/init $T/pairs.tsz && $I --header $T/init/last.tsz | grep -q '\"step\": 0'"
expect help 0 '' -- "$P --help | grep -q 'moco-pretrain'"

# tests/helpers/stream_compare (what the GPU checks compare checkpoints with): equal runs agree,
# different epochs do not, a checkpoint and a view stream cannot be compared
expect compare_equal_runs 0 'worst relative error 0 ' -- "$HELPERS/stream_compare $T/a/last.tsz $T/a2/last.tsz 0 >&2"
expect compare_different_epochs 1 'relative error' -- "$HELPERS/stream_compare $T/a/ckpt-0001.tsz $T/a/ckpt-0003.tsz 1e-6 >&2"
expect compare_different_streams 2 'differs in name' -- "$HELPERS/stream_compare $T/a/last.tsz $T/pairs.tsz 0"
# a few names may pass the tolerance when told how many and how far (the GPU checks' float32 runs)
expect compare_outliers_within_limit 0 'at most 1000 allowed' -- "$HELPERS/stream_compare $T/a/ckpt-0001.tsz $T/a/ckpt-0003.tsz 1e-6 1000 1e9 >&2"
expect compare_too_many_outliers 1 'at most 1 allowed' -- "$HELPERS/stream_compare $T/a/ckpt-0001.tsz $T/a/ckpt-0003.tsz 1e-6 1 1e9 >&2"
expect compare_outlier_past_limit 1 'each within 1e-09' -- "$HELPERS/stream_compare $T/a/ckpt-0001.tsz $T/a/ckpt-0003.tsz 1e-6 1000 1e-9 >&2"
