# t0700-linear.sh — moco-linear: the linear protocol on synthetic features (checked against the same
# SGD and the same L-BFGS objective in PyTorch), streaming = in memory, raw Fashion-MNIST pixels from
# shards and views, reports and saved classifiers, and bad input.
. "$(dirname "$0")/lib.sh"
L=$BIN/moco-linear
S=$BIN/moco-shard
A=$BIN/moco-augment
MK=$HELPERS/mkfeatures
PY=/usr/bin/python3
FMNIST=/usr/share/datasets/fashion-mnist

# Python helpers: a safetensors reader (numpy), the report, the references.
cat >"$T/lib.py" <<'EOF'
import json, struct, sys
import numpy as np
def load_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    h = json.loads(raw[8:8 + n]); base = 8 + n
    out = {k: np.frombuffer(raw[base + v["data_offsets"][0]: base + v["data_offsets"][1]], dtype=np.float32).reshape(v["shape"]).copy()
           for k, v in h.items() if k != "__metadata__"}
    return out, h.get("__metadata__", {})
def report(path):
    return json.load(open(path))
EOF
export PYTHONPATH=$T

# ---- easy: separable clusters, both solvers reach 100% ----
$MK --samples 400 --dim 16 --classes 4 --sep 4 >"$T/easy.feat"
$MK --samples 200 --dim 16 --classes 4 --sep 4 --split 1 >"$T/easy-val.feat"
expect sgd_on_separable_clusters 0 '' -- "$L -q --epochs 10 --milestones 6,8 --report $T/easy-sgd.json --log $T/easy.jsonl --save $T/easy.st --val $T/easy-val.feat $T/easy.feat"
check sgd_reaches_100 "$PY -c 'import lib; r = lib.report(\"$T/easy-sgd.json\"); assert r[\"top1\"] == 100 and r[\"train\"][\"top1\"] == 100, r[\"top1\"]'"
check text_report_on_stdout "grep -Eq '^val +100.00 +100.00' $T/out && grep -q '^confusion' $T/out && grep -Eq '^class-3 +50 +100.00' $T/out"
expect lbfgs_on_separable_clusters 0 '' -- "$L -q --solver lbfgs --report $T/easy-lbfgs.json --val $T/easy-val.feat $T/easy.feat"
check lbfgs_reaches_100 "$PY -c 'import lib; r = lib.report(\"$T/easy-lbfgs.json\"); assert r[\"top1\"] == 100 and r[\"lbfgs\"][\"stop\"] == \"converged\", r'"
check report_fields "$PY -c '
import lib; r = lib.report(\"$T/easy-sgd.json\")
for k in (\"top1\", \"top5\", \"loss\", \"per_class\", \"confusion\", \"settings\", \"n_train\", \"n_val\", \"seconds\", \"classes\", \"train\"):
    assert k in r, k
assert r[\"n_train\"] == 400 and r[\"n_val\"] == 200 and r[\"dim\"] == 16 and r[\"mode\"] == \"in-memory\"
assert r[\"classes\"] == [\"class-%d\" % k for k in range(4)]
assert [p[\"n\"] for p in r[\"per_class\"]] == [50] * 4 and sum(map(sum, r[\"confusion\"])) == 200
s = r[\"settings\"]; assert s[\"lr\"] == 30 and s[\"momentum\"] == 0.9 and s[\"batch\"] == 256 and s[\"epochs\"] == 10
'"
check log_one_line_per_epoch "$PY -c '
import json; rows = [json.loads(l) for l in open(\"$T/easy.jsonl\")]
assert [r[\"epoch\"] for r in rows] == list(range(1, 11))
assert all(abs(r[\"lr\"] - want) < 1e-9 for r, want in zip(rows, [30] * 6 + [3] * 2 + [0.3] * 2)), [r[\"lr\"] for r in rows]
assert all(k in r for r in rows for k in (\"loss\", \"top1\", \"top5\"))
'"
check saved_classifier "$PY -c '
import lib, json; t, meta = lib.load_st(\"$T/easy.st\")
assert t[\"fc.weight\"].shape == (4, 16) and t[\"fc.bias\"].shape == (4,) and \"feature_mean\" not in t
assert json.loads(meta[\"classes\"]) == [\"class-%d\" % k for k in range(4)] and json.loads(meta[\"settings\"])[\"solver\"] == \"sgd\"
'"
expect report_to_stdout_is_json 0 '' -- "$L -q --epochs 2 --report - $T/easy.feat"
check report_to_stdout_alone "$PY -c 'import json; r = json.load(open(\"$T/out\")); assert r[\"evaluated_on\"] == \"train\" and r[\"n_val\"] == 0'"

# ---- a harder case against PyTorch: the same SGD (same initial weights and batch order), and the
# optimum of the same L-BFGS objective ----
$MK --samples 2000 --dim 32 --classes 8 --sep 0.4 --seed 7 --npy "$T/hard" --reference "$T/ref" --shuffle-seed 3 --epochs 12 >/dev/null
$MK --samples 2000 --dim 32 --classes 8 --sep 0.4 --seed 7 >"$T/hard.feat"
$MK --samples 1000 --dim 32 --classes 8 --sep 0.4 --seed 7 --split 1 --npy "$T/hard-val" >"$T/hard-val.feat"
expect sgd_hard_case 0 '' -- "$L -q --lr 0.5 --batch 64 --epochs 12 --milestones 6,9 --seed 3 --save $T/hard-sgd.st --report $T/hard-sgd.json --val $T/hard-val.feat $T/hard.feat"
check sgd_equals_torch_sgd "$PY - '$T' <<'EOF'
import sys, lib, numpy as np, torch
T = sys.argv[1]
x = torch.from_numpy(np.load(T + '/hard-x.npy')); y = torch.from_numpy(np.load(T + '/hard-y.npy'))
perm = np.load(T + '/ref-perm.npy'); w0 = np.load(T + '/ref-w0.npy')
fc = torch.nn.Linear(w0.shape[1], w0.shape[0])
with torch.no_grad():
    fc.weight.copy_(torch.from_numpy(w0)); fc.bias.zero_()
lr, B, E, ms = 0.5, 64, 12, (6, 9)
opt = torch.optim.SGD(fc.parameters(), lr, momentum=0.9, weight_decay=0)
for e in range(E):   # main_lincls.py: step schedule per epoch, DataLoader batches (last one short)
    for g in opt.param_groups: g['lr'] = lr * 0.1 ** sum(e >= m for m in ms)
    for s in range(0, len(y), B):
        idx = torch.from_numpy(perm[e, s:s + B])
        loss = torch.nn.functional.cross_entropy(fc(x[idx]), y[idx])
        opt.zero_grad(); loss.backward(); opt.step()
t, _ = lib.load_st(T + '/hard-sgd.st')
W = fc.weight.detach().numpy(); b = fc.bias.detach().numpy()
assert np.abs(t['fc.weight'] - W).max() <= 1e-4 * np.abs(W).max(), np.abs(t['fc.weight'] - W).max()
assert np.abs(t['fc.bias'] - b).max() <= 1e-4 * np.abs(W).max()
xv = np.load(T + '/hard-val-x.npy'); yv = np.load(T + '/hard-val-y.npy')
acc = ((xv @ W.T + b).argmax(1) == yv).mean() * 100
r = lib.report(T + '/hard-sgd.json')
assert abs(r['top1'] - acc) <= 0.2 and 55 < acc < 95, (r['top1'], acc)
EOF"
expect lbfgs_hard_case 0 '' -- "$L -q --solver lbfgs --l2 1e-3 --save $T/hard-lbfgs.st --report $T/hard-lbfgs.json --log $T/hard-lbfgs.jsonl --val $T/hard-val.feat $T/hard.feat"
check lbfgs_reaches_torch_optimum "$PY - '$T' <<'EOF'
import sys, lib, numpy as np, torch
T = sys.argv[1]; lam = 1e-3
x = torch.from_numpy(np.load(T + '/hard-x.npy')).double(); y = torch.from_numpy(np.load(T + '/hard-y.npy'))
def objective(W, b):   # the documented objective: mean CE + lambda/2 ||W||^2, bias free
    return torch.nn.functional.cross_entropy(x @ W.T + b, y) + 0.5 * lam * (W * W).sum()
W = torch.zeros(8, 32, dtype=torch.float64, requires_grad=True); b = torch.zeros(8, dtype=torch.float64, requires_grad=True)
opt = torch.optim.LBFGS([W, b], max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-15, history_size=20, line_search_fn='strong_wolfe')
def closure():
    opt.zero_grad(); f = objective(W, b); f.backward(); return f
opt.step(closure)
ref = objective(W, b).item()
t, _ = lib.load_st(T + '/hard-lbfgs.st')
ours = objective(torch.from_numpy(t['fc.weight']).double(), torch.from_numpy(t['fc.bias']).double()).item()
r = lib.report(T + '/hard-lbfgs.json')
assert -1e-6 < ours - ref < 1e-4, (ours, ref)
assert abs(r['lbfgs']['objective'] - ours) < 1e-5, (r['lbfgs']['objective'], ours)
EOF"
check lbfgs_log_per_iteration "[ \$(wc -l <$T/hard-lbfgs.jsonl) -ge 5 ] && grep -q '\"objective\"' $T/hard-lbfgs.jsonl"
expect lbfgs_again 0 '' -- "$L -q --solver lbfgs --l2 1e-3 --threads 1 --save $T/hard-lbfgs2.st $T/hard.feat"
check lbfgs_is_deterministic "$PY -c '
import lib; a, _ = lib.load_st(\"$T/hard-lbfgs.st\"); b, _ = lib.load_st(\"$T/hard-lbfgs2.st\")
assert all((a[k] == b[k]).all() for k in a)
'"
# several --l2: chosen on a held-out tenth of train, then refit: the report names the candidates and
# the winner, whose refit is what --l2 WINNER alone gives
expect lbfgs_l2_chosen_on_held_out 0 '' -- "$L -q --solver lbfgs --l2 100,1e-3,1 --save $T/sel.st --report $T/sel.json --val $T/hard-val.feat $T/hard.feat"
check l2_search_in_the_report "$PY -c '
import lib; r = lib.report(\"$T/sel.json\"); s = r[\"settings\"]; c = s[\"l2_search\"][\"candidates\"]
assert [x[\"l2\"] for x in c] == [100, 1e-3, 1] and s[\"l2_search\"][\"holdout\"] == 0.1
best = max(c, key=lambda x: (x[\"holdout_top1\"], x[\"l2\"]))
assert s[\"l2\"] == best[\"l2\"] and s[\"l2\"] != 100, s
'"
expect lbfgs_l2_winner_alone 0 '' -- "$L -q --solver lbfgs --l2 1 --save $T/sel1.st $T/hard.feat"
check l2_winner_refit_on_all "$PY -c '
import lib; a, _ = lib.load_st(\"$T/sel.st\"); b, _ = lib.load_st(\"$T/sel1.st\")
assert lib.report(\"$T/sel.json\")[\"settings\"][\"l2\"] == 1 and all((a[k] == b[k]).all() for k in a)
'"
expect l2_list_needs_lbfgs 2 'several --l2 values are for --solver lbfgs' -- "$L -q --l2 1e-3,1e-2 $T/hard.feat"
expect holdout_needs_several_l2 2 'holdout chooses among several' -- "$L -q --solver lbfgs --holdout 0.2 $T/hard.feat"
expect l2_list_bad_value 2 '\-\-l2' -- "$L -q --solver lbfgs --l2 1e-3,x $T/hard.feat"
expect f16_features 0 '' -- "$MK --samples 2000 --dim 32 --classes 8 --sep 0.4 --seed 7 --f16 | $L -q --solver lbfgs --l2 1e-3 --report $T/f16.json --val $T/hard-val.feat -"
check f16_close_to_f32 "$PY -c 'import lib; a = lib.report(\"$T/f16.json\"); b = lib.report(\"$T/hard-lbfgs.json\"); assert abs(a[\"top1\"] - b[\"top1\"]) <= 1 and abs(a[\"lbfgs\"][\"objective\"] - b[\"lbfgs\"][\"objective\"]) < 1e-3'"

# ---- streaming: a stream of 3 epochs, each in the order the in-memory mode draws, gives the same weights ----
$MK --samples 1000 --dim 32 --classes 8 --sep 0.4 --seed 7 --epochs 3 --shuffle-seed 5 >"$T/stream3.feat"
$MK --samples 1000 --dim 32 --classes 8 --sep 0.4 --seed 7 >"$T/stream1.feat"
expect streaming_from_a_pipe 0 '' -- "cat $T/stream3.feat | $L -q --lr 0.5 --batch 96 --milestones 1,2 --seed 5 --report $T/st.json --save $T/st.st -"
expect in_memory_three_epochs 0 '' -- "$L -q --lr 0.5 --batch 96 --epochs 3 --milestones 1,2 --seed 5 --save $T/mem.st $T/stream1.feat"
check streaming_equals_in_memory "$PY -c '
import lib; a, _ = lib.load_st(\"$T/st.st\"); b, _ = lib.load_st(\"$T/mem.st\")
assert all((a[k] == b[k]).all() for k in a)
r = lib.report(\"$T/st.json\"); assert r[\"mode\"] == \"streaming\" and r[\"settings\"][\"epochs\"] == 3 and r[\"n_train\"] == 1000
'"
expect streaming_fewer_epochs_than_the_stream 0 '' -- "$L -q --epochs 2 --report $T/st2.json $T/stream3.feat"
check stops_after_two_epochs "$PY -c 'import lib; r = lib.report(\"$T/st2.json\"); assert r[\"settings\"][\"epochs\"] == 2'"
expect in_memory_forced_loads_every_record 0 '' -- "$L -q --in-memory --epochs 1 --report $T/st3.json $T/stream3.feat"
check in_memory_of_three_epochs "$PY -c 'import lib; r = lib.report(\"$T/st3.json\"); assert r[\"n_train\"] == 3000 and r[\"mode\"] == \"in-memory\"'"
expect streaming_truncated_stream 1 'ended in epoch 2 of 3, after 1500 records' -- "$MK --samples 1000 --dim 32 --classes 8 --epochs 3 --stop-after 1500 | $L -q -"
expect streaming_more_epochs_than_held 1 'holds 3 epoch\(s\).*--epochs 5' -- "$L -q --epochs 5 $T/stream3.feat"
expect streaming_needs_classes 2 'give --classes N' -- "$MK --epochs 2 --no-names | $L -q -"
expect streaming_with_classes 0 '' -- "$MK --epochs 2 --no-names | $L -q --classes 4 -"
expect streaming_refuses_standardize 2 'standardize needs the whole train set' -- "$L -q --standardize $T/stream3.feat"

# ---- raw pixels: 1000 Fashion-MNIST test images to train, 500 to validate, from shards and views ----
$PY - "$FMNIST/t10k-images-idx3-ubyte.gz" "$FMNIST/t10k-labels-idx1-ubyte.gz" "$T" <<'EOF'
import gzip, struct, sys
img = gzip.open(sys.argv[1]).read(); lab = gzip.open(sys.argv[2]).read()
magic, n, rows, cols = struct.unpack(">IIII", img[:16])
for name, a, b in (("tr", 0, 1000), ("va", 1000, 1500)):
    open(f"{sys.argv[3]}/{name}-images-idx3-ubyte", "wb").write(struct.pack(">IIII", magic, b - a, rows, cols) + img[16 + a * rows * cols:16 + b * rows * cols])
    open(f"{sys.argv[3]}/{name}-labels-idx1-ubyte", "wb").write(lab[:4] + struct.pack(">I", b - a) + lab[8 + a:8 + b])
EOF
$S -q --shard-size 300 --out "$T/fm-tr" "$T/tr-images-idx3-ubyte"
$S -q --out "$T/fm-va" "$T/va-images-idx3-ubyte"
expect raw_pixels_from_shard_folders 0 '' -- "$L -q --solver lbfgs --standardize --save $T/raw.st --report $T/raw.json --val $T/fm-va $T/fm-tr"
check raw_pixels_plausible "$PY -c '
import lib; r = lib.report(\"$T/raw.json\")
assert r[\"n_train\"] == 1000 and r[\"n_val\"] == 500 and r[\"dim\"] == 784 and 60 < r[\"top1\"] < 95, r[\"top1\"]
t, meta = lib.load_st(\"$T/raw.st\"); assert t[\"feature_mean\"].shape == (784,) and (t[\"feature_std\"] > 0).all()
'"
expect raw_pixels_sgd_from_a_shard_file 0 '' -- "$L -q --standardize --lr 0.1 --epochs 20 --milestones 12,16 --report $T/raw-sgd.json $T/fm-tr/shard-00000.tsz"
$A -q --recipe eval --size 28 --level 1 -o "$T/tr-views.tsz" "$T/fm-tr"
$A -q --recipe eval --size 28 --level 1 -o "$T/va-views.tsz" "$T/fm-va"
expect raw_pixels_from_views 0 '' -- "$L -q --standardize --lr 0.1 --epochs 20 --milestones 12,16 --report $T/views.json --val $T/va-views.tsz $T/tr-views.tsz"
expect lincls_views_streamed_from_a_pipe 0 '' -- "$A -q --recipe lincls --size 28 --epochs 2 --shuffle-buffer 100 $T/fm-tr | $L -q --lr 0.05 --milestones 1 --report $T/lincls.json --val $T/va-views.tsz -"
check lincls_streamed_report "$PY -c '
import lib; r = lib.report(\"$T/lincls.json\")
assert r[\"mode\"] == \"streaming\" and r[\"settings\"][\"epochs\"] == 2 and r[\"n_train\"] == 1000 and r[\"train\"][\"measured\"] == \"during the last epoch\"
assert r[\"train_recipe\"] == \"lincls\" and r[\"val_recipe\"] == \"eval\" and r[\"top1\"] > 40, r[\"top1\"]
'"
expect resumed_augment_stream_refused 1 'starts at epoch 1 \(moco-augment --first-epoch\)' -- "$A -q --recipe lincls --size 28 --epochs 2 --first-epoch 1 $T/fm-va | $L -q -"
check raw_views_plausible "$PY -c 'import lib; r = lib.report(\"$T/views.json\"); assert r[\"dim\"] == 784 and 60 < r[\"top1\"] < 95, r[\"top1\"]'"

# ---- bad input ----
expect val_with_other_dim 1 'd16.feat has 16 features per sample.*hard.feat has 32' -- "$MK --dim 16 >$T/d16.feat; $L -q --val $T/d16.feat $T/hard.feat"
expect val_with_other_classes 1 'name different classes' -- "$MK --dim 32 --classes 3 >$T/c3.feat; $L -q --val $T/c3.feat $T/hard.feat"
expect label_out_of_range 1 'bad-label.feat: sample 8: label 4 is outside the 4 classes' -- "$MK --bad-label 7 >$T/bad-label.feat; $L -q $T/bad-label.feat"
expect val_label_out_of_range 1 'vbad.feat: record 4: label 4 is outside the 4 classes' -- "$MK --bad-label 3 --split 1 >$T/vbad.feat; $L -q --epochs 1 --val $T/vbad.feat $T/easy.feat"
expect empty_stream 1 'empty.feat: no samples' -- "$MK --samples 0 >$T/empty.feat; $L -q $T/empty.feat"
expect record_without_features 1 'record 1: no "features" tensor' -- "$MK --tensor feat >$T/nofeat.feat; $L -q $T/nofeat.feat"
expect nan_feature 1 'nan.feat: record 6: feature 0 is NaN' -- "$MK --nan-at 5 >$T/nan.feat; $L -q $T/nan.feat"
expect nan_in_val 1 'vnan.feat: record 3: feature 0 is NaN' -- "$MK --nan-at 2 --split 1 >$T/vnan.feat; $L -q --epochs 1 --val $T/vnan.feat $T/easy.feat"
expect wrong_kind 1 'a "checkpoint" stream; expected features' -- "$HELPERS/mkstream --kind checkpoint >$T/ck.tsz; $L -q $T/ck.tsz"
expect not_a_stream 1 'notastream' -- "echo hello >$T/notastream; $L -q $T/notastream"
expect folder_without_shards 1 'without shard files' -- "mkdir -p $T/nothing; $L -q $T/nothing"
expect loss_not_finite 1 'epoch [0-9]+, step [0-9]+: the loss is NaN \(try a lower --lr' -- "$MK --sep 1e30 | $L -q --epochs 3 -"
mkdir -p "$T/tree/a" "$T/tree/b"
cp "$PHOTOS/china.jpg" "$T/tree/a/" && cp "$PHOTOS/flower.jpg" "$T/tree/b/"
$S -q --short-side 32 --out "$T/jpeg" "$T/tree"
expect jpeg_shards_refused 1 'JPEG-stored image.*moco-augment --recipe eval' -- "$L -q $T/jpeg"
expect no_classes_in_memory_uses_max_label 0 '' -- "$MK --no-names --classes 3 | $L -q --epochs 2 --report $T/nn.json -"
check classes_from_labels "$PY -c 'import lib; r = lib.report(\"$T/nn.json\"); assert r[\"classes\"] == [\"0\", \"1\", \"2\"]'"

# ---- usage ----
expect no_train_input 2 'no TRAIN' -- "$L"
expect unknown_solver 2 "'newton' is not sgd or lbfgs" -- "$L --solver newton $T/easy.feat"
expect lbfgs_cannot_stream 2 'streaming is for --solver sgd' -- "$L --solver lbfgs --streaming $T/easy.feat"
expect both_stdin 2 'cannot both be standard input' -- "$L --val - -"
expect bad_milestones 2 'milestones' -- "$L --milestones 6,x $T/easy.feat"
expect classes_disagree_with_header 2 '--classes 7: .* names 4 classes' -- "$L --classes 7 $T/easy.feat"
# the report into a folder that is not there: the open's own reason, and nothing left behind
expect report_into_a_missing_folder 1 'r.json: cannot open the report: No such file or directory' -- "$L -q --epochs 1 --report $T/none/r.json $T/easy.feat >/dev/null"
# a FIFO named as the report is written in place, not replaced by a file
mkfifo "$T/report.fifo"
expect report_into_a_fifo 0 '' -- "(cat $T/report.fifo >$T/fifo.json &) && $L -q --epochs 1 --report $T/report.fifo $T/easy.feat >/dev/null && sleep 0.2 && [ -p $T/report.fifo ] && grep -q '\"solver\"' $T/fifo.json"
expect help 0 '' -- "$L --help | grep -q 'Usage: moco-linear'"
expect version 0 '' -- "$L --version"

# --device cuda: the SGD protocol's steps on the GPU; without a CUDA backend or without a GPU here,
# a clear failure; L-BFGS stays on the CPU
$MK --samples 64 --dim 8 --classes 3 >"$T/cuda-train.feat"
$BIN/moco-linear -q --device cuda --epochs 1 "$T/cuda-train.feat" 2>"$T/cuda.err" </dev/null
echo $? >"$T/cuda.rc"
check cuda_without_a_gpu_is_a_clear_error "[ \$(cat $T/cuda.rc) = 1 ] && grep -Eq 'cuda:0: no such device|no CUDA backend to load' $T/cuda.err"
expect lbfgs_is_not_for_cuda 2 'L-BFGS runs on the CPU' -- "$BIN/moco-linear -q --solver lbfgs --device cuda $T/cuda-train.feat"
