#!/bin/sh
# install-deps.sh — install the Debian/Ubuntu packages the build, the tests and the demo need.
# Idempotent: packages already present are not touched, and nothing is printed when all are there.
# Runs as root, or through sudo when it is available.
set -eu

packages="build-essential pkg-config zstd libzstd-dev libjpeg62-turbo-dev libpng-dev zlib1g-dev libarchive-dev
libxxhash-dev libjansson-dev libdnnl-dev libopenblas-dev libopenmpi-dev openmpi-bin libexpat1-dev liblbfgs-dev clang libclang-rt-dev
dataset-fashion-mnist python3 python3-numpy python3-torch python3-torchvision python3-pil"

# Ubuntu names libjpeg-turbo's dev package differently.
if ! apt-cache show libjpeg62-turbo-dev >/dev/null 2>&1; then
  packages=$(echo "$packages" | sed 's/libjpeg62-turbo-dev/libjpeg-turbo8-dev/')
fi

missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1; then
  sudo="sudo"
else
  echo "install-deps.sh: need root or sudo to install:$missing" >&2
  exit 1
fi

echo "install-deps.sh: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
