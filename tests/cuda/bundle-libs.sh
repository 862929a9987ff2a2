#!/bin/sh
# bundle-libs.sh [BUILD] — pack the shared libraries that the programs tests/cuda/device-check.sh runs
# need, beyond the C and C++ runtimes and CUDA's own (cuDNN, cuBLAS, NCCL), into BUILD/lib/deps.tar.xz.
# The GPU machine is a different distribution without oneDNN, OpenBLAS, Open MPI or libjpeg.so.62;
# device-check.sh unpacks the bundle and puts it on the tools' LD_LIBRARY_PATH (not on Python's).
# Carry for a device run (8 paths): build/bin build/lib build/cuda-tests build/helpers build/bench
# build/peers build/photos500 (about 40 MiB with the bundle).
set -eu
build=${1:-build}
out=$build/lib/deps.tar.xz
programs="$build/bin/moco-shard $build/bin/moco-augment $build/bin/moco-pretrain $build/bin/moco-extract
    $build/bin/moco-linear $build/bin/moco-inspect $build/helpers/stream_compare $build/helpers/mkfeatures
    $build/bench/moco_step_bench $build/cuda-tests/check_* $build/lib/libmoco_cuda.so"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for p in $programs; do ldd "$p"; done |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u |
    grep -v -E '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcudnn[a-z_]*|libcublas(Lt)?|libnccl|libcuda)\.so' |
    while read -r lib; do cp -L "$lib" "$tmp/"; done
tar -cJf "$out.part" -C "$tmp" .
mv "$out.part" "$out"
echo "$out: $(ls "$tmp" | wc -l) libraries, $(du -h "$out" | cut -f1)"
