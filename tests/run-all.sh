#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing (Debian packages, Rust
# components, cargo-nextest, the tansu Kafka-protocol broker, moto's S3/SQS server and boto3),
# then checks formatting and lints and runs every test of the workspace. Postgres
# (127.0.0.1:5432) and MariaDB (127.0.0.1:3306) must be running, as on the CI machines.
#
# Environment:
#   TERRA_TEST_SKIP_TANSU=1   do not install/start tansu (the real-broker contract tests are
#                             then skipped; the mock-cluster ones still run)
#   TERRA_TEST_SKIP_MOTO=1    do not install/start moto (the S3/SQS tests are then skipped;
#                             the local-folder object tests still run)
#
# Naming convention: a test that needs moto (its S3/SQS server, TERRA_TEST_S3_ENDPOINT; its
# binary, TERRA_TEST_MOTO_SERVER; or its venv's Python with boto3, botocore, grpcio and
# terra-python, TERRA_TEST_PYTHON; npm's terra-api beside it, TERRA_TEST_TERRA_API_JS) has
# `moto` in its name: in a module such as `s3_on_moto::`, or in the
# function's name (`..._on_moto`, `..._from_the_moto_venv`). Without moto, the filter below
# skips exactly those (`not test(/moto/)`), and a test that needs moto without saying so
# panics naming this convention.
#   PROPTEST_CASES=N          cases of the fuzz runs in services/core/src/fuzz (default
#                             100,000 each; they print executions and time, see
#                             .config/nextest.toml) and of every other proptest
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n== %s\n' "$*"; }

step "system packages"
missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v pkg-config >/dev/null || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
else
  echo "all present"
fi

step "rust tools"
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
cargo nextest --version | head -1

step "kafka-protocol broker (tansu)"
TANSU_PID=""
if [ "${TERRA_TEST_SKIP_TANSU:-0}" != 1 ]; then
  tests/tansu.sh install
  # an assignment, so a broker that fails to start fails the run (eval "$(...)" would not)
  tansu_env=$(tests/tansu.sh start)
  eval "$tansu_env"   # exports TERRA_TEST_KAFKA_BOOTSTRAP, TANSU_PID
  trap '[ -n "$TANSU_PID" ] && kill "$TANSU_PID" 2>/dev/null || true' EXIT
else
  echo "skipped (TERRA_TEST_SKIP_TANSU=1)"
fi

step "S3/SQS-compatible server (moto)"
MOTO_PID=""
if [ "${TERRA_TEST_SKIP_MOTO:-0}" != 1 ]; then
  tests/moto.sh install
  # independent verifiers for the webhook sender's tests, in moto's venv: Terra's Python SDK
  # (1.x checks every v1 of a rotation) and the Standard Webhooks library
  "$HOME/.cache/terra-ingest/moto-venv/bin/python" -c 'import terra.utils.verify_signature, standardwebhooks' 2>/dev/null \
    || "$HOME/.cache/terra-ingest/moto-venv/bin/pip" install -q 'terra-python>=1.1,<2' 'standardwebhooks>=1.1,<2' >&2
  # Terra's JavaScript SDK (npm `terra-api`, verifyTerraWebhookSignature) for the same tests
  # (tests/e2e/terra_sdks.rs); cached, installed once per machine
  command -v npm >/dev/null || { SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo; $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm; }
  TERRA_API_JS="$HOME/.cache/terra-ingest/terra-api-js"
  [ -f "$TERRA_API_JS/node_modules/terra-api/package.json" ] \
    || { mkdir -p "$TERRA_API_JS" && npm install --prefix "$TERRA_API_JS" --no-audit --no-fund --silent 'terra-api@>=2.0.21 <3' >&2; }
  export TERRA_TEST_TERRA_API_JS="$TERRA_API_JS/node_modules"
  moto_env=$(tests/moto.sh start)
  eval "$moto_env"   # exports TERRA_TEST_S3_ENDPOINT, MOTO_PID, AWS_* test credentials
else
  echo "skipped (TERRA_TEST_SKIP_MOTO=1)"
fi
trap '[ -n "$TANSU_PID" ] && kill "$TANSU_PID" 2>/dev/null; [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null; true' EXIT

step "helm chart"
tests/helm.sh

step "format"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
if [ -n "${TERRA_TEST_KAFKA_BOOTSTRAP:-}" ] && [ -n "${TERRA_TEST_S3_ENDPOINT:-}" ]; then
  # the ignored tests need the real broker and the S3/SQS server; tests named *_child are helper processes their parent test runs
  cargo nextest run --workspace --locked --no-fail-fast --run-ignored all -E 'not test(/_child$/)'
else
  filter='not test(/_child$/)'
  [ -n "${TERRA_TEST_KAFKA_BOOTSTRAP:-}" ] || filter="$filter and not test(/kafka_broker/)"
  [ -n "${TERRA_TEST_S3_ENDPOINT:-}" ] || filter="$filter and not test(/moto/)"
  cargo nextest run --workspace --locked --no-fail-fast --run-ignored all -E "$filter"
fi
