# t0650-extract.sh — moco-extract: features of real views from a checkpoint and from a safetensors
# file, checked against torchvision's ResNet on the same views; bad input.
. "$(dirname "$0")/lib.sh"
S=$BIN/moco-shard
A=$BIN/moco-augment
P=$BIN/moco-pretrain
X=$BIN/moco-extract
I=$BIN/moco-inspect
PY=/usr/bin/python3
MODEL="--arch resnet18 --cifar-stem --width 4 --dim 16 --queue 64 --momentum-key 0.99 --bn-groups 2 --batch 32 --threads 2"

fmnist_head 100 "$T/small-idx3-ubyte"
$S -q --out "$T/shards" "$T/small-idx3-ubyte"
$A -q --size 16 --blur 0 --grayscale 0 --jitter 0.4,0.4,0,0 --epochs 2 --level 0 -o "$T/pairs.tsz" "$T/shards"
$P -q $MODEL --out "$T/run" "$T/pairs.tsz"
$A -q --recipe eval --size 16 --resize 16 --level 0 -o "$T/eval.tsz" "$T/shards"

expect extracts_from_checkpoint 0 '' -- "$X -q --threads 2 --batch 7 $T/run/last.tsz $T/eval.tsz >$T/f.feat"
expect feature_stream_is_whole 0 '' -- "$I $T/f.feat"
check one_record_per_view "grep -q '100 records' $T/out && grep -q 'f32\[32\]' $T/out"
expect extracts_f16_from_a_pipe 0 '' -- "cat $T/eval.tsz | $X -q --dtype f16 $T/run/last.tsz | $I -"
check f16_features "grep -q 'f16\[32\]' $T/out && grep -q '100 records' $T/out"

# torchvision's ResNet-18 (width 4, CIFAR stem) with the checkpoint's query weights, evaluation mode,
# on the same views normalised the same way, must give the same pooled features.
check features_match_torchvision "$PY - $T <<'EOF'
import sys, numpy as np, torch, torch.nn as nn, torchvision
sys.path.insert(0, '$TOP/tests/tools')
from read_stream import records
from torchvision.models.resnet import BasicBlock
T = sys.argv[1]
class Net(torchvision.models.ResNet):
    def __init__(self):
        nn.Module.__init__(self)
        self._norm_layer, self.dilation, self.groups, self.base_width, self.inplanes = nn.BatchNorm2d, 1, 1, 64, 4
        self.conv1 = nn.Conv2d(1, 4, 3, 1, 1, bias=False)
        self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, 4, 2)
        self.layer2 = self._make_layer(BasicBlock, 8, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 16, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 32, 2, stride=2)
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d((1, 1)), nn.Identity()
net = Net()
sd = {}
for _, _, t in records(T + '/run/last.tsz'):
    for name, a in t.items():
        if name.startswith('encoder_q.') and not name.startswith('encoder_q.fc'):
            sd[name[10:]] = torch.from_numpy(a.copy())
net.load_state_dict(sd, strict=True)
net.eval()
views = {s: t['views'][0] for s, _, t in records(T + '/eval.tsz')}
feats = {s: t['features'] for s, _, t in records(T + '/f.feat')}
assert sorted(views) == sorted(feats) == list(range(100))
ids = sorted(views)
x = np.stack([views[i] for i in ids]).astype(np.float32) / 255
x = torch.from_numpy((x - 0.485) / 0.229).permute(0, 3, 1, 2).float()
with torch.no_grad():
    want = net(x).numpy()
got = np.stack([feats[i] for i in ids])
err = np.linalg.norm(got - want) / np.linalg.norm(want)
assert err < 1e-4, err
EOF"

# The same encoder from a safetensors file with torchvision's names (what published weights are).
check safetensors_made_by_python "$PY - $T <<'EOF'
import sys, json, struct, numpy as np
sys.path.insert(0, '$TOP/tests/tools')
from read_stream import records
T = sys.argv[1]
tensors = {}
for _, _, t in records(T + '/run/last.tsz'):
    for name, a in t.items():
        if name.startswith('encoder_q.'):
            tensors[name[10:]] = a
header, blobs, off = {}, [], 0
for name, a in tensors.items():
    b = a.tobytes()
    header[name] = {'dtype': 'I64' if a.dtype == np.int64 else 'F32', 'shape': list(a.shape), 'data_offsets': [off, off + len(b)]}
    blobs.append(b); off += len(b)
h = json.dumps(header).encode(); h += b' ' * (-len(h) % 8)
open(T + '/q.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h + b''.join(blobs))
EOF"
expect extracts_from_safetensors 0 '' -- "$X -q $T/q.safetensors $T/eval.tsz >$T/fs.feat"
check safetensors_gives_the_same_features "[ \"\$($PY $TOP/tests/tools/stream_digest.py $T/f.feat | cut -d' ' -f2)\" = \"\$($PY $TOP/tests/tools/stream_digest.py $T/fs.feat | cut -d' ' -f2)\" ]"
expect header_carries_epochs_and_classes 0 '' -- "$I --header $T/f.feat"
check feature_header "$PY -c 'import json; h=json.load(open(\"$T/out\")); assert h[\"kind\"]==\"features\" and h[\"dim\"]==32 and h[\"samples\"]==100 and h[\"epochs\"]==1 and h[\"recipe\"]==\"eval\"'"

$S -q --out "$T/photos" --short-side 40 "$PHOTOS" 2>/dev/null
expect refuses_views_of_wrong_channels 1 'views have 3 channel\(s\), the encoder of .* takes 1' -- "$A -q --recipe eval --size 32 $T/photos | $X -q $T/run/last.tsz"
expect refuses_a_shard_stream 1 'a "images" stream; moco-extract reads views' -- "cat $T/shards/shard-00000.tsz | $X -q $T/run/last.tsz"
expect refuses_a_stream_that_is_not_a_model 1 'eval.tsz: a "views" stream, not a checkpoint' -- "$X -q $T/eval.tsz $T/eval.tsz"
expect refuses_a_file_that_is_not_a_model 1 'neither a checkpoint nor a safetensors file' -- "$X -q $T/small-idx3-ubyte $T/eval.tsz"
expect refuses_a_truncated_checkpoint 1 'last-cut.tsz: .*truncated' -- "head -c 20000 $T/run/last.tsz >$T/last-cut.tsz; $X -q $T/last-cut.tsz $T/eval.tsz"
expect needs_a_model 2 'no model given' -- "$X -q"
expect help 0 '' -- "$X --help | grep -q 'moco-extract'"

# --device cuda: without a CUDA backend to load (a CPU-only build), or with one but no GPU here, a
# clear failure, and no half-written output
$X -q --device cuda -o "$T/gpu.feat" "$T/run/last.tsz" "$T/eval.tsz" 2>"$T/cuda.err"
echo $? >"$T/cuda.rc"
check cuda_without_a_gpu_is_a_clear_error "[ \$(cat $T/cuda.rc) = 1 ] && grep -Eq 'cuda:0: no such device|no CUDA backend to load' $T/cuda.err && [ ! -e $T/gpu.feat ]"
expect device_must_be_cpu_or_cuda 2 'expected cpu, cuda or cuda:N' -- "$X -q --device gpu $T/run/last.tsz $T/eval.tsz"
