#!/usr/bin/env bash
# Load check of the webhook receiver (README, Performance). `gantry receiver`
# runs on loopback with its defaults: every accepted push is verified,
# deduped and committed (group commit in SQLite), fsync'd, before its 202.
#
# 1. Open loop (the target): `gantry-loadgen` sends signed 8 KB GitHub
#    pushes at a fixed arrival rate, 5,000/s for ROUNDS rounds and then
#    10,000/s once, each a push of its own (the receiver dedupes by
#    content: repository, ref, before, after), and measures every request
#    from the time it was due, so a stall shows in all the requests behind
#    it; it reports the rate it reached and the percentiles of SECONDS x
#    rate samples. The summary gives every round and the median round's
#    p99 (a shared machine's disk stalls now and then).
# 2. Closed loop, for the ratio to the no-op route: `gantry-loadgen
#    --connections` (each sender sends when its last answer came)
#    alternates the pushes and `GET /healthz` for ROUNDS rounds, and the
#    summary takes each one's median: on a shared 2-core machine a single
#    run swings by a fifth. (wrk, used before, cannot sign a new body per
#    request, and a repeated push is now a duplicate.)
#   bash tests/load_receiver.sh [SECONDS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
seconds="${1:-10}"
connections="${2:-64}"
rounds="${3:-3}"
[ "$rounds" -ge 1 ] || { echo "ROUNDS must be at least 1" >&2; exit 2; }
rustup toolchain install >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gantry-target}"
cargo build --release --locked -q -p gantry-cli -p gantry-loadgen
gantry="$CARGO_TARGET_DIR/release/gantry"
loadgen="$CARGO_TARGET_DIR/release/gantry-loadgen"

work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/gantry.yaml" <<'EOF'
pipeline: web
repository: acme/web
environments:
  dev:
    trigger:
      push: { branches: ["feature/*"] }
    steps:
      - deploy:
          command: ["true"]
EOF
secret="load-check-secret"
# A push of about 8 KB: the head commit plus commits with long messages.
python3 - "$work/body.json" <<'EOF'
import json, sys
commits = [{"id": f"{i:040x}", "message": "m" * 700, "author": {"username": "alice"}} for i in range(10)]
body = {"ref": "refs/heads/feature/load", "after": "b" * 40, "deleted": False,
        "repository": {"full_name": "acme/web"}, "sender": {"login": "alice"},
        "head_commit": {"author": {"username": "alice"}}, "commits": commits}
open(sys.argv[1], "w").write(json.dumps(body))
EOF

GANTRY_GITHUB_WEBHOOK_SECRET="$secret" "$gantry" receiver --config "$work/gantry.yaml" \
  --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/receiver.log" 2>&1 &
pid=$!
addr=""
for _ in $(seq 100); do
  addr=$(sed -n 's/^gantry receiver on http:\/\/\([^ ]*\).*/\1/p' "$work/receiver.log")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/receiver.log" >&2; exit 1; }

echo "== open loop: gantry-loadgen, ${seconds}s per rate, against $addr"
: >"$work/open"
for rate in $(for _ in $(seq "$rounds"); do echo 5000; done) 10000; do
  "$loadgen" --url "http://$addr/webhooks/github" --body "$work/body.json" --secret "$secret" \
    --rate "$rate" --seconds "$seconds" --label "open-$rate" | tee -a "$work/open.txt" | tail -1 >>"$work/open"
done

echo "== closed loop: gantry-loadgen, ${seconds}s, $connections connections, $rounds rounds"
: >"$work/rounds"
for round in $(seq "$rounds"); do
  "$loadgen" --url "http://$addr/webhooks/github" --body "$work/body.json" --secret "$secret" \
    --connections "$connections" --seconds "$seconds" --label "push-$round" | tee -a "$work/closed.txt" | tail -1 >>"$work/rounds"
  "$loadgen" --url "http://$addr/healthz" --get \
    --connections "$connections" --seconds "$seconds" --label "noop-$round" | tee -a "$work/closed.txt" | tail -1 >>"$work/rounds"
done
body_bytes=$(wc -c <"$work/body.json")
python3 - "$work/rounds" "$body_bytes" "$work/open" <<'PY'
import json, statistics, sys

print(f"open loop, signed {sys.argv[2]}-byte pushes, each enqueued durably (fsync'd) before its 202:")
print("| asked | reached | p50 | p99 | p99.9 | max | samples | failed |")
print("|---|---|---|---|---|---|---|---|")
failed = 0
target = []
for line in open(sys.argv[3]):
    r = json.loads(line)
    failed += r["failed"]
    if r["rate"] == 5000:
        target.append(r)
    print(f"| {r['rate']:,}/s | {r['reached']:,.0f}/s | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms "
          f"| {r['p999_ms']:.1f} ms | {r['max_ms']:.1f} ms | {r['samples']:,} | {r['failed']} |")
p99s = sorted(r["p99_ms"] for r in target)
reached = statistics.median(r["reached"] for r in target)
print(f"5,000/s, median of {len(target)} rounds: reached {reached:,.0f}/s, p99 {statistics.median(p99s):.1f} ms "
      f"(rounds: {', '.join(f'{p:.1f}' for p in p99s)} ms)")
closed = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
push = [r for r in closed if r["label"].startswith("push-")]
noop = [r for r in closed if r["label"].startswith("noop-")]
failed += sum(r["failed"] for r in push + noop)
print(f"closed loop (gantry-loadgen, {push[0]['connections']} connections), medians of {len(push)} rounds:")
print("| route | requests/s | p99 | failed |")
print("|---|---|---|---|")
for name, rs in (("POST /webhooks/github, signed push, enqueued durably", push), ("GET /healthz (no-op)", noop)):
    print(f"| {name} | {statistics.median(r['reached'] for r in rs):,.0f} "
          f"| {statistics.median(r['p99_ms'] for r in rs):.1f} ms | {sum(r['failed'] for r in rs)} |")
ratios = [p["reached"] / n["reached"] for p, n in zip(push, noop)]
print(f"durable pushes / no-op: {statistics.median(r['reached'] for r in push) / statistics.median(r['reached'] for r in noop):.0%} "
      f"(per round: {', '.join(f'{r:.0%}' for r in ratios)})")
sys.exit(1 if failed else 0)
PY
