# t0800-export.sh — moco-export: a checkpoint's encoder as safetensors that torchvision's ResNet
# loads with strict=True and that computes what moco computes (eval mode, within 1e-4), detectron2's
# names as MoCo's convert-pretrain-to-detectron2.py makes them, --part, --head, --list, bad input.
# Two tiny checkpoints: ResNet-18 width 4 with the CIFAR stem, grey, MLP head (the demo's shape), and
# ResNet-50 width 8 with the standard stem, RGB, v1's linear head (Bottlenecks, downsample, max-pool).
. "$(dirname "$0")/lib.sh"
S=$BIN/moco-shard
A=$BIN/moco-augment
P=$BIN/moco-pretrain
X=$BIN/moco-export
H=$HELPERS/ckpt_helper
PY=/usr/bin/python3
AUG="--scale 0.2,1 --jitter 0.4,0.4,0,0 --grayscale 0 --blur 0 --threads 2 --epochs 1 --level 0"

# 64 Fashion-MNIST images, as grey and as RGB shards; one epoch of pairs each; two steps of training
fmnist_head 64 "$T/small-idx3-ubyte"
$S -q --out "$T/grey" "$T/small-idx3-ubyte"
$S -q --channels 3 --out "$T/rgb" "$T/small-idx3-ubyte"
$A -q $AUG --size 16 -o "$T/pairs16.tsz" "$T/grey"
$A -q $AUG --size 32 -o "$T/pairs32.tsz" "$T/rgb"
$P -q --arch resnet18 --cifar-stem --width 4 --dim 16 --queue 64 --momentum-key 0.99 --bn-groups 2 --batch 32 \
    --threads 2 --save-every 0 --out "$T/a" "$T/pairs16.tsz"
$P -q --arch resnet50 --width 8 --no-mlp --dim 16 --queue 64 --bn-groups 2 --batch 8 --max-steps 2 \
    --threads 2 --save-every 0 --out "$T/b" "$T/pairs32.tsz"
A_CK=$T/a/last.tsz
B_CK=$T/b/last.tsz

# check.py: safetensors read with json + numpy (Debian has no safetensors package), the model built
# from the file's own metadata as torchvision's ResNet, loaded with strict=True, and its eval-mode
# output compared with moco's (ckpt_helper forward) on the same input.
cat >"$T/check.py" <<'EOF'
import json, struct, sys
import numpy as np

def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    types = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + b:8 + n + e], types[info["dtype"]]).reshape(info["shape"])
    return out, meta, header

def script_name(k):  # MoCo's detection/convert-pretrain-to-detectron2.py, its loop body
    if "layer" not in k:
        k = "stem." + k
    for t in [1, 2, 3, 4]:
        k = k.replace("layer{}".format(t), "res{}".format(t + 1))
    for t in [1, 2, 3]:
        k = k.replace("bn{}".format(t), "conv{}.norm".format(t))
    k = k.replace("downsample.0", "shortcut")
    k = k.replace("downsample.1", "shortcut.norm")
    return k

def model(meta):
    import torch.nn as nn, torchvision
    from torchvision.models.resnet import BasicBlock, Bottleneck

    class WideResNet(torchvision.models.ResNet):  # as tests/parity/make_fixtures.py
        def __init__(self, block, layers, width, in_channels, cifar_stem):
            nn.Module.__init__(self)
            self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
            self.inplanes = width
            if cifar_stem:
                self.conv1, self.maxpool = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.Identity()
            else:
                self.conv1, self.maxpool = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1)
            self.bn1, self.relu = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
            self.layer1 = self._make_layer(block, width, layers[0])
            self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
            self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
            self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Identity()

    arch = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
            "resnet50": (Bottleneck, [3, 4, 6, 3])}[meta["arch"]]
    m = WideResNet(*arch, int(meta["width"]), int(meta["in_channels"]), meta["cifar_stem"] == "1")
    f, dim = 8 * int(meta["width"]) * arch[0].expansion, int(meta["dim"])
    if meta["export_head"] == "keep":
        m.fc = nn.Sequential(nn.Linear(f, f), nn.ReLU(), nn.Linear(f, dim)) if meta["head"] == "mlp" else nn.Linear(f, dim)
    return m

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "input":  # input.f32 n h w c: a fixed random NHWC batch
    n, h, w, c = map(int, args[1:])
    np.random.default_rng(7).standard_normal((n, h, w, c)).astype(np.float32).tofile(args[0])
elif cmd == "torch":  # one import of torch for every check that needs it; prints PASS/FAIL lines
    import torch, torchvision

    def forward(export, inp, moco, n, h, w):  # strict load, then the same outputs as moco's
        t, meta, _ = load(export)
        n, h, w = int(n), int(h), int(w)
        m = model(meta)
        m.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in t.items()}, strict=True)
        m.eval()
        x = torch.from_numpy(np.fromfile(inp, np.float32).reshape(n, h, w, -1)).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            y = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
            pooled = torch.flatten(m.avgpool(y), 1)
            parts = [pooled.numpy().ravel()]
            if meta["export_head"] == "keep":
                parts.append(m.fc(pooled).numpy().ravel())
        ours = np.fromfile(moco, np.float32)
        assert ours.size == sum(p.size for p in parts), (ours.size, [p.size for p in parts])
        for p in parts:  # pooled features, then the head's output: each within 1e-4 of its largest value
            err = np.abs(ours[:p.size] - p).max() / np.abs(p).max()
            assert err <= 1e-4 and np.abs(p).max() > 0, "relative error %g" % err
            ours = ours[p.size:]

    def tvnames(drop, keep):  # torchvision.models.resnet50's keys: all, or all but its classifier
        want = set(torchvision.models.resnet50().state_dict())
        assert set(load(drop)[0]) == want - {"fc.weight", "fc.bias"}, "backbone keys differ"
        assert set(load(keep)[0]) == want, "keys with the head differ"

    jobs = {"forward": (forward, 6), "tvnames": (tvnames, 2)}
    i = 0
    while i < len(args):
        fn, nargs = jobs[args[i]]
        name, fargs = args[i + 1], args[i + 2:i + 2 + nargs]
        i += 2 + nargs
        try:
            fn(*fargs)
            print("PASS", name)
        except Exception as e:
            print("FAIL %s: %s: %s" % (name, type(e).__name__, e))
elif cmd == "layout":  # export.safetensors step: dtypes, num_batches_tracked, metadata
    t, meta, header = load(args[0])
    for k, info in header.items():
        if k.endswith("num_batches_tracked"):
            assert info["dtype"] == "I64" and info["shape"] == [] and int(t[k]) == int(args[1]), (k, info, t[k])
        else:
            assert info["dtype"] == "F32", (k, info)
    assert meta["format"] == "pt" and meta["step"] == args[1] and meta["producer"].startswith("moco-export")
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and "checkpoint_args" in meta
elif cmd == "list":  # export.safetensors list.txt: --list shows exactly what is written, in order
    _, _, header = load(args[0])
    rows = [l.split() for l in open(args[1])]
    want = [[k, "%s[%s]" % ({"F32": "f32", "I64": "i64"}[v["dtype"]], ",".join(map(str, v["shape"])))] for k, v in header.items()]
    assert rows == want, (rows[:3], want[:3])
elif cmd == "detectron2":  # torchvision.safetensors d2.safetensors: the script's names, same values
    tv, _, _ = load(args[0])
    d2, meta, _ = load(args[1])
    renamed = {script_name(k): v for k, v in tv.items()}
    assert set(renamed) == set(d2), sorted(set(renamed) ^ set(d2))
    assert all(np.array_equal(renamed[k], d2[k]) for k in d2)
    assert meta["naming"] == "detectron2"
    assert any(k.startswith("stem.conv1.norm.") for k in d2) and not any("bn" in k or "layer" in k for k in d2)
elif cmd == "no-head":  # d2_keep.safetensors d2_drop.safetensors: drop = keep less the stem.fc.* keys
    keep, _, _ = load(args[0])
    drop, _, _ = load(args[1])
    assert set(drop) == {k for k in keep if not k.startswith("stem.fc.")} and len(drop) < len(keep)
elif cmd == "differ":  # q.safetensors k.safetensors: same names and shapes, other weights
    q, _, _ = load(args[0])
    k, _, _ = load(args[1])
    assert list(q) == list(k) and all(q[n].shape == k[n].shape for n in q)
    assert not np.array_equal(q["conv1.weight"], k["conv1.weight"])
EOF
check() { # shadow lib.sh's check to show python's message on failure
    name=$1
    shift
    if (eval "$*") >"$T/check.out" 2>&1; then pass "$name"; else fail "$name" "$(tail -n 3 "$T/check.out" | tr '\n' ' ')"; fi
}
C="$PY $T/check.py"
$C input "$T/in16.f32" 2 16 16 1
$C input "$T/in32.f32" 2 32 32 3

# ResNet-18, CIFAR stem, MLP head: the backbone (default), the backbone and head, the key encoder
expect exports_backbone 0 EMPTY -- "$X $A_CK -o $T/a_q.safetensors"
check dtypes_counters_metadata "$C layout $T/a_q.safetensors 2"
expect exports_mlp_head 0 EMPTY -- "$X --head keep $A_CK -o $T/a_qh.safetensors"
check mlp_head_names "$X --list --head keep $A_CK | grep -q '^fc.0.weight f32\\[32,32\\]' && $X --list --head keep $A_CK | grep -q '^fc.2.bias f32\\[16\\]' && ! $X --list $A_CK | grep -q '^fc'"
expect exports_key_encoder 0 EMPTY -- "$X --part encoder_k --head keep $A_CK -o $T/a_k.safetensors"
check key_encoder_differs "$C differ $T/a_qh.safetensors $T/a_k.safetensors"
expect lists 0 EMPTY -- "$X --list --head keep $A_CK >$T/a_qh.list"
check list_is_what_is_written "$C list $T/a_qh.safetensors $T/a_qh.list"
expect list_into_a_closed_pipe_is_quiet 0 EMPTY -- "{ $X --list $B_CK; echo \$? >$T/list.status; } | true; exit \$(cat $T/list.status)"
check list_writes_nothing "$X --list $A_CK -o $T/not-written.safetensors >/dev/null && [ ! -e $T/not-written.safetensors ]"

# ResNet-50, standard stem, v1's linear head: torchvision.models.resnet50's names, strict load
expect exports_resnet50 0 EMPTY -- "$X $B_CK -o $T/b_q.safetensors && $X --head keep $B_CK -o $T/b_qh.safetensors"

# moco's own forward of each exported encoder (eval mode), then torchvision's on the same input
expect moco_forwards 0 EMPTY -- "$H forward $A_CK encoder_q. $T/in16.f32 2 16 16 $T/a_q.moco --no-head &&
    $H forward $A_CK encoder_q. $T/in16.f32 2 16 16 $T/a_qh.moco && $H forward $A_CK encoder_k. $T/in16.f32 2 16 16 $T/a_k.moco &&
    $H forward $B_CK encoder_q. $T/in32.f32 2 32 32 $T/b_q.moco --no-head && $H forward $B_CK encoder_q. $T/in32.f32 2 32 32 $T/b_qh.moco"
$C torch \
    forward backbone_loads_strict_and_matches "$T/a_q.safetensors" "$T/in16.f32" "$T/a_q.moco" 2 16 16 \
    forward mlp_head_loads_strict_and_matches "$T/a_qh.safetensors" "$T/in16.f32" "$T/a_qh.moco" 2 16 16 \
    forward key_encoder_loads_strict_and_matches "$T/a_k.safetensors" "$T/in16.f32" "$T/a_k.moco" 2 16 16 \
    forward resnet50_backbone_matches "$T/b_q.safetensors" "$T/in32.f32" "$T/b_q.moco" 2 32 32 \
    forward resnet50_linear_head_matches "$T/b_qh.safetensors" "$T/in32.f32" "$T/b_qh.moco" 2 32 32 \
    tvnames resnet50_names_are_torchvision_s "$T/b_q.safetensors" "$T/b_qh.safetensors" ||
    fail torch_checks "check.py torch exited with status $?"

# detectron2: the script's renaming of the torchvision names, values untouched; the head dropped
# unless --head keep (then exactly the script's output, stem.fc.* included)
expect exports_detectron2 0 EMPTY -- "$X --detectron2 $B_CK -o $T/b_d2.safetensors && $X --detectron2 --head keep $B_CK -o $T/b_d2h.safetensors && $X --detectron2 --head keep $A_CK -o $T/a_d2h.safetensors"
check detectron2_is_the_scripts_renaming "$C detectron2 $T/b_qh.safetensors $T/b_d2h.safetensors && $C detectron2 $T/a_qh.safetensors $T/a_d2h.safetensors"
check detectron2_drops_the_head "$C no-head $T/b_d2h.safetensors $T/b_d2.safetensors"
check detectron2_resnet50_names "$X --list --detectron2 $B_CK | grep -q '^res2.0.shortcut.norm.running_var f32\\[32\\]' && $X --list --detectron2 $B_CK | grep -q '^res5.2.conv3.norm.weight f32\\[256\\]' && $X --list --detectron2 $B_CK | grep -q '^stem.conv1.weight f32\\[8,3,7,7\\]'"

# bad input: clear messages naming the file, nothing left behind
expect refuses_a_shard 1 'shard-00000.tsz: a "images" stream, not a checkpoint' -- "$X $T/grey/shard-00000.tsz -o $T/x.safetensors"
expect missing_checkpoint 1 'nothing.tsz' -- "$X $T/nothing.tsz -o $T/x.safetensors"
$H strip "$A_CK" "$T/no_k.tsz" encoder_k.
expect refuses_a_missing_part 1 'no_k.tsz: encoder_k. tensors missing \(0 of [0-9]+ found\)' -- "$X --part encoder_k $T/no_k.tsz -o $T/x.safetensors"
expect other_part_still_exports 0 EMPTY -- "$X $T/no_k.tsz -o $T/x.safetensors"
rm -f "$T/x.safetensors"
expect refuses_truncated 1 'cut.tsz: record [0-9]+: .*truncated' -- "head -c 200000 $A_CK >$T/cut.tsz; $X $T/cut.tsz -o $T/x.safetensors"
expect refuses_corrupt 1 'flipped.tsz.*record [0-9]+' -- "cp $A_CK $T/flipped.tsz && printf '\\377' | dd of=$T/flipped.tsz bs=1 seek=150000 conv=notrunc 2>/dev/null; $X $T/flipped.tsz -o $T/x.safetensors"
check nothing_written_on_failure "[ ! -e $T/x.safetensors ] && [ -z \"\$(ls $T | grep '\\.tmp\\.')\" ]"
expect write_failure_names_the_output 1 'no/such/dir/x.safetensors' -- "$X $A_CK -o $T/no/such/dir/x.safetensors"
expect needs_out 2 '-o OUT.safetensors is required' -- "$X $A_CK"
expect needs_a_checkpoint 2 'no CHECKPOINT' -- "$X -o $T/x.safetensors"
expect one_checkpoint 2 'one CHECKPOINT' -- "$X $A_CK $B_CK -o $T/x.safetensors"
expect bad_part 2 "--part: 'encoder_x' is not encoder_q or encoder_k" -- "$X --part encoder_x $A_CK -o $T/x.safetensors"
expect bad_head 2 "--head: 'maybe' is not keep or drop" -- "$X --head maybe $A_CK -o $T/x.safetensors"
expect help 0 EMPTY -- "$X --help | grep -q 'Usage: moco-export'"
expect version 0 EMPTY -- "$X --version | grep -q 'moco'"
