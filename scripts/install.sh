#!/usr/bin/env bash
# Installs what mpt needs on a fresh Debian 12 machine (as root): system
# packages, then a virtualenv in .venv with mpt built from this tree.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=0
for cmd in gcc clang ip tc nft iperf3 ping; do
    command -v "$cmd" >/dev/null 2>&1 || need_apt=1
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt=1
[ -e "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || need_apt=1
[ -e /usr/include/openssl/evp.h ] || need_apt=1   # libcrypto for the datapath's AEAD
if [ "$need_apt" = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq build-essential python3-dev python3-venv iproute2 nftables \
        iperf3 iputils-ping libssl-dev clang >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test,demo]'
echo "mpt installed in $(pwd)/.venv"
