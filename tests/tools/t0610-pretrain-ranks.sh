# t0610-pretrain-ranks.sh — moco-pretrain as two MPI ranks (Open MPI's mpirun): the same training
# as one process with the batch of both and two query and key BN groups, step by step; each rank its
# own moco-augment --part; ranks that disagree, diverge, hang or die end the run with an error.
. "$(dirname "$0")/lib.sh"
S=$BIN/moco-shard
A=$BIN/moco-augment
P=$BIN/moco-pretrain
PY=/usr/bin/python3
if ! command -v mpirun >/dev/null 2>&1; then
    fail mpirun_installed "no mpirun (scripts/install-deps.sh installs Open MPI)"
    exit 0
fi
# Open MPI as root, 2 ranks on however few cores, no cross-memory attach (refused in containers);
# no leak reports from MPI's own allocations under the sanitizers' build.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
MPIRUN="mpirun --oversubscribe --bind-to none -np 2"
RANK='\$OMPI_COMM_WORLD_RANK' # expanded by the shell each rank runs
RANK_HERE='$OMPI_COMM_WORLD_RANK'
MODEL="--arch resnet18 --cifar-stem --width 4 --dim 16 --queue 96 --momentum-key 0.99 --lr 0.06 --wd 5e-4 --threads 1 -q"
AUG="--size 16 --scale 0.2,1 --jitter 0.4,0.4,0,0 --grayscale 0 --blur 0 --threads 2"

# 256 Fashion-MNIST images, two epochs of pairs: 8 steps of 2 x 16 pairs per epoch. Also in 4 shards,
# 2 for each rank's own part. (A run this tiny collapses within a few steps, and then float noise
# of 1e-7 can flip a ReLU and move a gradient by a percent: 4 steps on data where it does not.)
fmnist_head 256 "$T/small-idx3-ubyte"
$S -q --out "$T/shards" "$T/small-idx3-ubyte"
$S -q --shard-size 64 --out "$T/shards4" "$T/small-idx3-ubyte"
$A -q $AUG --epochs 2 --level 0 -o "$T/pairs.tsz" "$T/shards"

expect two_ranks_train 0 '' -- "$MPIRUN $P $MODEL --batch 16 --max-steps 4 --save-every 0 --log $T/mpi.jsonl --log-every 1 --out $T/mpi $T/pairs.tsz"
expect one_process_with_two_groups_trains 0 '' -- "$P $MODEL --batch 32 --bn-groups 2 --query-bn-groups 2 --max-steps 4 --save-every 0 --log $T/one.jsonl --log-every 1 --out $T/one $T/pairs.tsz"
check two_ranks_equal_one_process_step_by_step "cd $TOP/tests/tools && $PY -c '
import json, numpy as np
from read_stream import records
def load(p):
    it = records(p, header=True)
    return next(it), {n: a for _, _, ts in it for n, a in ts.items()}
hm, m = load(\"$T/mpi/last.tsz\")
ho, o = load(\"$T/one/last.tsz\")
assert hm[\"ranks\"] == 2 and hm[\"batch\"] == 16 and ho[\"ranks\"] == 1 and ho[\"batch\"] == 32
assert hm[\"step\"] == ho[\"step\"] == 4 and hm[\"samples_consumed\"] == ho[\"samples_consumed\"] == 128
assert hm[\"queue_ptr\"] == ho[\"queue_ptr\"] == 128 % 96 and hm[\"lr\"] == ho[\"lr\"]
assert sorted(m) == sorted(o) and any(n.startswith(\"queue\") for n in m)
for n in m:
    a, b = m[n].astype(np.float64), o[n].astype(np.float64)
    assert np.abs(a - b).max() <= 1e-3 * max(np.abs(b).max(), 1e-6), (n, np.abs(a - b).max())
lm = [json.loads(l) for l in open(\"$T/mpi.jsonl\")]
lo = [json.loads(l) for l in open(\"$T/one.jsonl\")]
assert len(lm) == len(lo) == 4 and all(r[\"ranks\"] == 2 for r in lm)
for a, b in zip(lm, lo):
    assert a[\"step\"] == b[\"step\"] and abs(a[\"loss\"] - b[\"loss\"]) <= 1e-4 * b[\"loss\"], (a, b)
    assert a[\"acc1\"] == b[\"acc1\"] and a[\"lr\"] == b[\"lr\"]
'"
# the two differ from a run with a single BN group: the comparison above can tell
expect one_process_one_group_trains 0 '' -- "$P $MODEL --batch 32 --bn-groups 1 --max-steps 4 --save-every 0 --out $T/plain $T/pairs.tsz"
check one_group_differs "cd $TOP/tests/tools && $PY -c '
import numpy as np
from read_stream import records
a = {n: x for _, _, ts in records(\"$T/one/last.tsz\") for n, x in ts.items()}
b = {n: x for _, _, ts in records(\"$T/plain/last.tsz\") for n, x in ts.items()}
assert np.abs(a[\"queue\"] - b[\"queue\"]).max() > 1e-3
'"

# a resumed two-rank run goes on exactly as an uninterrupted one
expect two_ranks_stop_at_2 0 '' -- "$MPIRUN $P $MODEL --batch 16 --max-steps 2 --save-every 0 --out $T/half $T/pairs.tsz"
expect two_ranks_resume 0 '' -- "$MPIRUN $P $MODEL --batch 16 --max-steps 4 --save-every 0 --resume $T/half --out $T/half $T/pairs.tsz"
check resumed_equals_uninterrupted "cd $TOP/tests/tools && $PY -c '
import numpy as np
from read_stream import records
a = {n: x for _, _, ts in records(\"$T/half/last.tsz\") for n, x in ts.items()}
b = {n: x for _, _, ts in records(\"$T/mpi/last.tsz\") for n, x in ts.items()}
assert all(np.array_equal(a[n], b[n]) for n in b)
'"

# each rank its own part of the shards, through a pipe from its own moco-augment
expect own_parts_through_pipes 0 '' -- "$MPIRUN sh -c \"$A -q $AUG --epochs 2 --part $RANK/2 $T/shards4 | $P $MODEL --batch 16 --save-every 0 --out $T/parts\""
check own_parts_ran_two_epochs "$PY -c '
import json, subprocess
h = json.loads(subprocess.run([\"$BIN/moco-inspect\", \"--header\", \"$T/parts/last.tsz\"], capture_output=True).stdout)
assert h[\"ranks\"] == 2 and h[\"step\"] == 16 and h[\"samples_consumed\"] == 512
'"
$A -q $AUG --epochs 1 --level 0 --part 0/3 -o "$T/third.tsz" "$T/shards4"
expect parts_must_match_ranks 1 'part 0 of 3.*2 rank' -- "$MPIRUN $P $MODEL --batch 16 --out $T/bad $T/third.tsz"

# ranks that disagree or drift apart stop with an error
expect ranks_must_agree_on_batch 1 'disagree on --batch' -- "$MPIRUN sh -c \"exec $P $MODEL --batch \\\$((16 + 16 * $RANK)) --out $T/bad $T/pairs.tsz\""
expect diverged_ranks_are_caught 1 "ranks' key encoder differ" -- "$MPIRUN sh -c \"exec $P $MODEL --batch 16 --momentum-key 0.9$RANK --max-steps 2 --out $T/bad $T/pairs.tsz\""
check nothing_saved_by_a_diverged_run "[ ! -e $T/bad/last.tsz ]"

# a rank that hangs (its input never comes): the others give up after --rank-timeout and abort
mkfifo "$T/never"
expect hung_rank_times_out 1 'no answer from the other ranks for 2 s' -- "timeout 60 $MPIRUN sh -c \"if [ $RANK = 1 ]; then exec $P $MODEL --batch 16 --rank-timeout 2 --out $T/hang $T/never; else exec $P $MODEL --batch 16 --rank-timeout 2 --out $T/hang $T/pairs.tsz; fi\""
check hung_run_saved_nothing "[ ! -e $T/hang/last.tsz ]"

# a rank killed: the job ends with an error, long before the collective timeout
(
    cd "$T" && timeout 60 $MPIRUN sh -c "echo \$\$ >$T/pid.$RANK_HERE; if [ $RANK_HERE = 1 ]; then exec $P $MODEL --batch 16 --out $T/kill $T/never; else exec $P $MODEL --batch 16 --out $T/kill $T/pairs.tsz; fi" >/dev/null 2>"$T/kill.err"
    echo $? >"$T/kill.rc"
) &
job=$!
for _ in $(seq 100); do [ -s "$T/pid.1" ] && break; sleep 0.1; done
sleep 1
started=$(date +%s)
kill -9 "$(cat "$T/pid.1")"
wait $job
elapsed=$(($(date +%s) - started))
check killed_rank_ends_the_job "[ \"\$(cat $T/kill.rc)\" -ne 0 ] && [ \"\$(cat $T/kill.rc)\" -ne 124 ] && [ $elapsed -lt 30 ]"
check killed_run_saved_nothing "[ ! -e $T/kill/last.tsz ]"

expect query_groups_must_split_batch 2 'query-bn-groups' -- "$P $MODEL --batch 30 --bn-groups 1 --query-bn-groups 4 --out $T/bad $T/pairs.tsz"

# SIGTERM to every rank (a scheduler's preemption) while both wait for input: they stop after the
# same step, rank 0 saves last.tsz there, and the run resumes from it
size=$(wc -c <"$T/pairs.tsz")
for r in 0 1; do
    mkfifo "$T/slow.$r"
    ( head -c $((size * 40 / 100)) "$T/pairs.tsz"; sleep 30 ) >"$T/slow.$r" &
done
(
    timeout 60 $MPIRUN sh -c "echo \$\$ >$T/tpid.$RANK_HERE; exec $P $MODEL --batch 16 --save-every 0 --log $T/term.jsonl --log-every 1 --out $T/term $T/slow.$RANK_HERE" >/dev/null 2>"$T/term.err"
    echo $? >"$T/term.rc"
) &
job=$!
for _ in $(seq 300); do grep -q '"step":2,' "$T/term.jsonl" 2>/dev/null && break; sleep 0.1; done
sleep 1
kill -TERM "$(cat "$T/tpid.0")" "$(cat "$T/tpid.1")"
wait $job
check sigterm_stops_every_rank_and_rank_0_saves "[ \"\$(cat $T/term.rc)\" -ne 0 ] && [ \"\$(cat $T/term.rc)\" -ne 124 ] && grep -q 'stopped by signal 15' $T/term.err && [ -f $T/term/last.tsz ]"
expect resumes_after_sigterm_of_every_rank 0 '' -- "$MPIRUN $P $MODEL --batch 16 --max-steps 8 --save-every 0 --resume $T/term --out $T/term $T/pairs.tsz && $BIN/moco-inspect --header $T/term/last.tsz | grep -q '\"step\": 8'"
