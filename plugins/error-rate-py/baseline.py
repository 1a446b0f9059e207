"""The error-rate check as a plain script: the subprocess baseline the
language benchmark (tests/benches/gate_languages.rs) compares the
component with. `python3 baseline.py URL [MAX_RATE]`; exit 0 pass, 1 fail."""

import json
import sys
import urllib.request


def main() -> int:
    url = sys.argv[1]
    max_rate = float(sys.argv[2]) if len(sys.argv) > 2 else 0.01
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    requests, errors = int(body["requests"]), int(body["errors"])
    rate = errors / requests if requests else 0.0
    passed = rate <= max_rate
    print(json.dumps({"decision": "pass" if passed else "fail", "error_rate": f"{rate:.4f}"}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
