#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine. Idempotent.
# README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# Toolchain and the wasm32-wasip2 target, as rust-toolchain.toml pins them.
rustup toolchain install
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gantry-target}"
export CARGO_TERM_COLOR=never

echo "== format"
cargo fmt --all -- --check
cargo fmt --manifest-path plugins/Cargo.toml --all -- --check
cargo fmt --manifest-path sdk/rust/Cargo.toml -- --check

echo "== clippy (guests: sdk and plugins, wasm32-wasip2)"
(cd plugins && cargo clippy --locked --release --all-targets --target-dir target -- -D warnings)

echo "== clippy (host workspace)"
cargo clippy --locked --workspace --all-targets -- -D warnings

echo "== tests"
cargo test --locked --workspace
