#!/usr/bin/env bash
# README's main command: builds the CLI and the example plugins, starts a
# local HTTP app on a random loopback port, and runs gates against it.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain install >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gantry-target}"
(cd plugins && cargo build --release --locked -q --target-dir target)
cargo build --release --locked -q -p gantry-cli
gantry="$CARGO_TARGET_DIR/release/gantry"
plugins=plugins/target/wasm32-wasip2/release

work=$(mktemp -d)
python3 -m http.server 0 --bind 127.0.0.1 --directory "$work" >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do
  port=$(grep -oE 'port [0-9]+' "$work/server.log" | grep -oE '[0-9]+' || true)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "the local app did not start" >&2; exit 1; }
app="http://127.0.0.1:$port"

echo "== http-health against $app (allowed by --allow-host)"
"$gantry" plugin run "$plugins/http_health.wasm" --env staging \
  --config "url=$app/" --config max_latency_ms=500 --allow-host "$app"

echo "== the same gate without the grant: denied, and the denial is logged"
"$gantry" plugin run "$plugins/http_health.wasm" --env staging --config "url=$app/" || true

echo "== soak: retry-after until the check has held for 3 s"
state="$work/soak.state"
while :; do
  status=0
  "$gantry" plugin run "$plugins/soak.wasm" --env staging --config "url=$app/" \
    --config stable_for=3 --config interval=1 --allow-host "$app" \
    --state "$state" --save-state "$state" >/dev/null || status=$?
  [ "$status" -eq 3 ] || break
  sleep 1
done
[ "$status" -eq 0 ] && echo "soak passed"
