#!/usr/bin/env bash
# Load check of the webhook receiver (README, Performance). `gantry receiver`
# runs on loopback with its defaults: every accepted push is verified,
# deduped and committed (group commit in SQLite), fsync'd, before its 202.
#
# 1. Open loop (the target): `gantry-loadgen` sends signed 8 KB GitHub
#    pushes at a fixed arrival rate, 5,000/s for ROUNDS rounds and then
#    10,000/s once, each with its own delivery id, and measures every
#    request from the time it was due, so a stall shows in all the requests
#    behind it; it reports the rate it reached and the percentiles of
#    SECONDS x rate samples. The summary gives every round and the median
#    round's p99 (a shared machine's disk stalls now and then).
# 2. Closed loop, for the ratio to the no-op route: `wrk` (2 threads,
#    CONNECTIONS connections) alternates the pushes and `GET /healthz` for
#    ROUNDS rounds, and the summary takes each one's median: on a shared
#    2-core machine a single run swings by a fifth.
#   bash tests/load_receiver.sh [SECONDS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
seconds="${1:-10}"
connections="${2:-64}"
rounds="${3:-3}"
[ "$rounds" -ge 1 ] || { echo "ROUNDS must be at least 1" >&2; exit 2; }
if ! command -v wrk >/dev/null; then
  echo "== installing wrk"
  apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi
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
signature="sha256=$(openssl dgst -sha256 -hmac "$secret" -r "$work/body.json" | cut -d' ' -f1)"

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

cat >"$work/push.lua" <<'EOF'
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  local f = io.open(os.getenv("BODY_FILE"), "rb")
  body = f:read("*a")
  f:close()
  signature = os.getenv("SIGNATURE")
  counter = 0
end
function request()
  counter = counter + 1
  return wrk.format("POST", "/webhooks/github", {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "push",
    ["X-GitHub-Hook-ID"] = "1",
    ["X-GitHub-Delivery"] = "load-" .. id .. "-" .. counter,
    ["X-Hub-Signature-256"] = signature,
  }, body)
end
EOF

run() { # name, wrk args...; prints "requests/s p99 failed" (non-2xx and socket errors)
  local name=$1
  shift
  wrk --latency -t2 -c"$connections" -d"${seconds}s" "$@" >"$work/$name.out"
  local rps p99 errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/$name.out")
  p99=$(awk '$1 == "99%" {print $2}' "$work/$name.out")
  [ -n "$rps" ] && [ -n "$p99" ] || {
    echo "wrk printed no figures:" >&2
    cat "$work/$name.out" >&2
    return 1
  }
  errors=$(awk '/Non-2xx or 3xx responses:/ {n += $5}
    /Socket errors:/ {for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i}
    END {print n + 0}' "$work/$name.out")
  echo "$rps $p99 $errors"
}

echo "== open loop: gantry-loadgen, ${seconds}s per rate, against $addr"
: >"$work/open"
for rate in $(for _ in $(seq "$rounds"); do echo 5000; done) 10000; do
  "$loadgen" --url "http://$addr/webhooks/github" --body "$work/body.json" --secret "$secret" \
    --rate "$rate" --seconds "$seconds" --label "open-$rate" | tee -a "$work/open.txt" | tail -1 >>"$work/open"
done

echo "== closed loop: wrk, ${seconds}s, $connections connections, 2 threads, $rounds rounds"
: >"$work/rounds"
for round in $(seq "$rounds"); do
  push=$(BODY_FILE="$work/body.json" SIGNATURE="$signature" run push -s "$work/push.lua" "http://$addr")
  noop=$(run noop "http://$addr/healthz")
  echo "round $round: pushes $push | no-op $noop"
  echo "$push $noop" >>"$work/rounds"
done
body_bytes=$(wc -c <"$work/body.json")
python3 - "$work/rounds" "$body_bytes" "$work/open" <<'PY'
import json, statistics, sys

def ms(text):
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise SystemExit(f"wrk printed a latency this script cannot read: {text}")

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
rounds = [line.split() for line in open(sys.argv[1]) if line.strip()]
push = [float(r[0]) for r in rounds]
noop = [float(r[3]) for r in rounds]
push_p99 = [ms(r[1]) for r in rounds]
noop_p99 = [ms(r[4]) for r in rounds]
ratios = [p / n for p, n in zip(push, noop)]
print(f"closed loop (wrk), medians of {len(rounds)} rounds:")
print("| route | requests/s | p99 | failed |")
print("|---|---|---|---|")
print(f"| POST /webhooks/github, signed push, enqueued durably | {statistics.median(push):,.0f} "
      f"| {statistics.median(push_p99):.1f} ms | {sum(int(r[2]) for r in rounds)} |")
print(f"| GET /healthz (no-op) | {statistics.median(noop):,.0f} "
      f"| {statistics.median(noop_p99):.1f} ms | {sum(int(r[5]) for r in rounds)} |")
print(f"durable pushes / no-op: {statistics.median(push) / statistics.median(noop):.0%} "
      f"(per round: {', '.join(f'{r:.0%}' for r in ratios)})")
sys.exit(1 if failed else 0)
PY
if [ "$(awk '{s += $3} END {print s + 0}' "$work/rounds")" != "0" ]; then
  echo "some pushes were not accepted:" >&2
  tail -5 "$work/receiver.log" >&2
  exit 1
fi
