#!/usr/bin/env bash
# Installs the Debian packages MSQ needs, if any is missing: OpenBLAS, LLVM's OpenMP runtime,
# zlib headers, Open MPI (headers for `msq`'s MSQDistributed target, `mpirun` to launch ranks) and the
# Fashion-MNIST dataset (/usr/share/datasets/fashion-mnist).
set -euo pipefail
packages=(libopenblas-dev libomp-dev zlib1g-dev libopenmpi-dev openmpi-bin dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all packages present (${packages[*]})"
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}"
