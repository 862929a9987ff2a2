# lib.sh — helpers for the tool tests (sourced). Like git's t/: each check runs real binaries in
# pipes and prints "PASS name" or "FAIL name: why", which tests/run.sh counts.
# Environment: BUILD (the build folder, absolute) and TOP (the repository root).
set -u
BIN=$BUILD/bin
HELPERS=$BUILD/helpers
PHOTOS=$TOP/../shared/data/photos
T=$(mktemp -d /tmp/moco-tool-test.XXXXXX)
trap 'rm -rf "$T"' EXIT

# fmnist_head N FILE: the first N images of Fashion-MNIST's test set as an (uncompressed) IDX file,
# small real data for tests that train.
fmnist_head() {
    /usr/bin/python3 - "$1" "$2" <<'EOF'
import gzip, struct, sys
n, out = int(sys.argv[1]), sys.argv[2]
raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
magic, _, rows, cols = struct.unpack(">IIII", raw[:16])
open(out, "wb").write(struct.pack(">IIII", magic, n, rows, cols) + raw[16:16 + n * rows * cols])
EOF
}

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

# expect NAME STATUS STDERR_PATTERN -- command...: the command (run by sh -c, so pipes work)
# must exit with STATUS and its stderr must match the extended regex STDERR_PATTERN ('' = any,
# 'EMPTY' = nothing at all on stderr).
expect() {
    name=$1 want=$2 pattern=$3
    shift 4
    sh -c "$*" >"$T/out" 2>"$T/err"
    got=$?
    if [ "$got" -ne "$want" ]; then
        fail "$name" "exit $got, expected $want; stderr: $(head -c 300 "$T/err")"
    elif [ "$pattern" = EMPTY ] && [ -s "$T/err" ]; then
        fail "$name" "expected no message, got: $(head -c 300 "$T/err")"
    elif [ -n "$pattern" ] && [ "$pattern" != EMPTY ] && ! grep -Eq -- "$pattern" "$T/err"; then
        fail "$name" "stderr does not match /$pattern/: $(head -c 300 "$T/err")"
    else
        pass "$name"
    fi
}

# check NAME condition...: a shell condition, evaluated in a subshell of the test (its functions
# and variables are visible).
check() {
    name=$1
    shift
    if (eval "$*") >/dev/null 2>&1; then pass "$name"; else fail "$name" "$*"; fi
}
