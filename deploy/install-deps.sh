#!/usr/bin/env bash
# Installs what omnifold needs beyond the Rust toolchain, idempotently:
# libclang (bindgen for RocksDB), a C/C++ toolchain (RocksDB, librdkafka),
# and the tansu Kafka-compatible broker used by `make run` and the tests.
set -euo pipefail

TANSU_VERSION=0.6.0

missing=()
for pkg in libclang-dev build-essential; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing system packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "installing tansu $TANSU_VERSION (a few minutes, once)"
  cargo install --locked "tansu@$TANSU_VERSION" --features dynostore,libsql
fi
