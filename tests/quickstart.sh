#!/usr/bin/env bash
# README's main command: builds gantry, the example plugins and the toy app,
# starts `gantry serve` on the example pipeline (tests/example/gantry.yaml)
# with the embedded store, and walks through the whole flow:
#   1. a push deploys dev and passes its gate;
#   2. a merge takes the same SHA through staging to an approval in production;
#   3. an approval sends it through canary 10/50/100 to success;
#   4. a second artifact, faulty at 10%, rolls production back and holds it.
# Every API call carries a token: the admin token given at start issues an
# operator token for the script and approver tokens for alice, bob and
# carol; the audit log is shown and verified at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain install >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gantry-target}"
echo "== building (the first build takes a few minutes)"
(cd plugins && cargo build --release --locked -q --target-dir target)
cargo build --release --locked -q -p gantry-cli -p gantry-toy-app
bin="$CARGO_TARGET_DIR/release"
gantry="$bin/gantry"
export GANTRY_SERVER="http://127.0.0.1:${GANTRY_PORT:-8420}"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/gantry-toy-app" dev=127.0.0.1:7101 staging=127.0.0.1:7102 production=127.0.0.1:7103 \
  >"$work/toy.log" 2>&1 &
pids+=($!)
admin_token="quickstart-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
GANTRY_ADMIN_TOKEN="$admin_token" \
  "$gantry" serve --config tests/example/gantry.yaml --data-dir "$work/data" \
  --listen "${GANTRY_SERVER#http://}" >"$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "$GANTRY_SERVER/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "$GANTRY_SERVER/healthz" >/dev/null || { cat "$work/serve.log" "$work/toy.log" >&2; exit 1; }
echo "== gantry serve is up at $GANTRY_SERVER (log: $work/serve.log)"

echo; echo "== tokens: an operator for this script, an approver each for alice, bob and carol"
issue() { GANTRY_TOKEN="$admin_token" "$gantry" token issue --user "$1" --role "$2" --expires 1d; }
export GANTRY_TOKEN=$(issue ops operator)
alice_token=$(issue alice approver)
bob_token=$(issue bob approver)
carol_token=$(issue carol approver)
GANTRY_TOKEN="$admin_token" "$gantry" token list
echo "== without a token, the API refuses:"
GANTRY_TOKEN= "$gantry" runs list || true

# wait_for RUN STATUS: polls until the run reaches STATUS (or fails loudly).
wait_for() {
  local run=$1 want=$2 status=""
  for _ in $(seq 300); do
    status=$("$gantry" runs show "$run" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    [ "$status" = "$want" ] && return 0
    case "$status" in succeeded|failed|rolled_back|superseded|needs_attention) break ;; esac
    sleep 0.1
  done
  echo "run $run is $status, expected $want" >&2
  "$gantry" runs show "$run" >&2
  exit 1
}
run_id() { python3 -c 'import json,sys; print(json.load(sys.stdin)["run"])'; }

good=3f2a9c1d5e7b8a90c1d2e3f405162738495a6b7c
bad=9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d

echo; echo "== 1. push $good to feature/login: dev deploys and passes its gate"
dev_run=$("$gantry" submit push --repo acme/web --branch feature/login --sha $good --author alice --json | run_id)
wait_for "$dev_run" succeeded
"$gantry" runs show "$dev_run"

echo; echo "== 2. merge into main: staging, then production waits for approval"
prod_run=$("$gantry" submit merge --repo acme/web --base main --sha $good --author alice --merged-by alice --json | run_id)
wait_for "$prod_run" waiting
"$gantry" runs show "$prod_run"

echo; echo "== alice wrote the change, so she may not approve it"
GANTRY_TOKEN="$alice_token" "$gantry" approve "$prod_run" --env production --reason "ship it" || true

echo; echo "== 3. bob sees what waits for him and approves it by its SHA: canary 10/50/100 to success"
GANTRY_TOKEN="$bob_token" "$gantry" approvals
GANTRY_TOKEN="$bob_token" "$gantry" approve "$good" --reason "reviewed the staging evidence"
wait_for "$prod_run" succeeded
"$gantry" runs show "$prod_run"
"$gantry" evidence $good

echo; echo "== 4. $bad is faulty in production (40% errors); it rolls back at 10%"
curl -sf -X POST -H 'content-type: application/json' \
  -d "{\"sha\":\"$bad\",\"error_rate\":0.4}" http://127.0.0.1:7103/faults
bad_run=$("$gantry" submit merge --repo acme/web --base main --sha $bad --author dave --merged-by dave --json | run_id)
wait_for "$bad_run" waiting
GANTRY_TOKEN="$carol_token" "$gantry" approve "$bad_run" --env production --reason "looks fine in staging"
wait_for "$bad_run" rolled_back
"$gantry" runs show "$bad_run"
"$gantry" evidence $bad
echo; echo "== production is held until a person releases it"
curl -sf http://127.0.0.1:7103/health; echo
"$gantry" release production
echo; echo "== every run"
"$gantry" runs list
echo; echo "== the audit log: every change and refusal, hash-chained"
GANTRY_TOKEN="$admin_token" "$gantry" audit
GANTRY_TOKEN="$admin_token" "$gantry" audit verify
