#!/usr/bin/env bash
# Installs anygpt-jax on one TPU VM worker (tpu_vm.sh setup runs it on every worker): the
# audio library the data code links, this package, and libtpu at the version jax pins.
set -euo pipefail
cd "$(dirname "$0")/../.."

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! dpkg -s libsndfile1 >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libsndfile1
fi
python3 -m pip install -q --upgrade pip
python3 -m pip install -q -e .
# jax's tpu extra pins the libtpu built for this jax; keep the jax that setup.py chose.
JAX_VERSION="$(python3 -c 'import jax; print(jax.__version__)')"
python3 -m pip install -q "jax[tpu]==${JAX_VERSION}"
python3 -c 'import jax, libtpu; print("jax", jax.__version__, "with libtpu", libtpu.__file__)'
