#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine. Idempotent.
# README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Toolchain and the wasm32-wasip2 target, as rust-toolchain.toml pins them.
rustup toolchain install
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gantry-target}"
export CARGO_TERM_COLOR=never

echo "== moto_server, for the AWS backend's tests (each test process starts its own)"
python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5.2,<6'
command -v moto_server >/dev/null || { echo "moto_server is not on PATH after pip install" >&2; exit 1; }

echo "== componentize-py and pytest, for the Python SDK and the Python plugins"
python3 -m pip install --quiet --disable-pip-version-check 'componentize-py==0.25.1' 'pytest>=8,<10'
command -v componentize-py >/dev/null || { echo "componentize-py is not on PATH after pip install" >&2; exit 1; }

echo "== the JavaScript SDK's npm packages (componentize-qjs, componentize-js), pinned by sdk/js/package-lock.json"
command -v node >/dev/null && command -v npm >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
}
(cd sdk/js && npm ci --no-audit --no-fund --loglevel=error)

echo "== PostgreSQL binaries, for the migration tests (each test process runs its own cluster)"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
fi
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || {
  echo "initdb is not installed after apt-get install postgresql" >&2
  exit 1
}

echo "== Python SDK and plugins: unit tests in plain CPython against the SDK's fake host"
PYTHONPATH=sdk/python python3 -m pytest -q -p no:cacheprovider sdk/python/tests plugins/error-rate-py/tests

echo "== JavaScript SDK and plugins: unit tests in plain Node against the SDK's fake host"
(cd sdk/js && node --test)
(cd plugins/error-rate-js && node --test)

echo "== format"
cargo fmt --all -- --check
cargo fmt --manifest-path plugins/Cargo.toml --all -- --check
cargo fmt --manifest-path sdk/rust/Cargo.toml -- --check

echo "== clippy (guests: sdk and plugins, wasm32-wasip2)"
(cd plugins && cargo clippy --locked --release --all-targets --target-dir target -- -D warnings)

echo "== the embedded build compiles no AWS SDK; --features aws does"
if cargo tree --locked -p gantry-cli -e normal --prefix none | grep '^aws-sdk-'; then
  echo "the embedded build (gantry-cli without features) compiles an AWS SDK" >&2
  exit 1
fi
cargo tree --locked -p gantry-cli --features aws -e normal --prefix none | grep -q '^aws-sdk-dynamodb ' || {
  echo "gantry-cli --features aws does not compile aws-sdk-dynamodb" >&2
  exit 1
}

echo "== clippy (host workspace, with the AWS backend)"
cargo clippy --locked --workspace --all-targets --features gantry-cli/aws -- -D warnings

echo "== tests (the CLI's with --features aws: its tests run the binary on both backends)"
cargo test --locked --no-fail-fast --workspace --features gantry-cli/aws
