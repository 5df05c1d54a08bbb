#!/usr/bin/env bash
# Installs what omnifold needs beyond the Rust toolchain, idempotently:
# libclang (bindgen for RocksDB), a C/C++ toolchain (RocksDB, librdkafka),
# the tansu Kafka-compatible broker used by `make run` and the tests,
# moto's S3-compatible server, which the snapshot store's tests run, and
# grpcio with grpcio-tools for the Python example client's test, and buf
# (from the npm registry) for the contract's lint.
set -euo pipefail

TANSU_VERSION=0.6.0
MOTO_VERSION=5.2.1
GRPCIO_VERSION=1.76.0
BUF_VERSION=1.75.0
BUF_DIR="${OMNIFOLD_TOOLS:-$HOME/.cache/omnifold/tools}"

missing=()
pkgs=(libclang-dev build-essential)
command -v npm >/dev/null || pkgs+=(nodejs npm)
for pkg in "${pkgs[@]}"; do
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

if ! python3 -c "import moto, flask; assert moto.__version__ == '$MOTO_VERSION'" 2>/dev/null; then
  echo "installing moto[server] $MOTO_VERSION (an S3-compatible server for the snapshot tests)"
  python3 -m pip install --quiet "moto[server]==$MOTO_VERSION"
fi

if ! python3 -c "import grpc, grpc_tools; assert grpc.__version__ == '$GRPCIO_VERSION'" 2>/dev/null; then
  echo "installing grpcio and grpcio-tools $GRPCIO_VERSION (the Python example client)"
  python3 -m pip install --quiet "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION"
fi

if ! "$BUF_DIR/node_modules/.bin/buf" --version 2>/dev/null | grep -qx "$BUF_VERSION"; then
  echo "installing buf $BUF_VERSION into $BUF_DIR (the proto lint)"
  npm install --silent --no-audit --no-fund --prefix "$BUF_DIR" "@bufbuild/buf@$BUF_VERSION"
fi
