#!/usr/bin/env bash
# `steermoe serve` on the tiny fixture, driven by Python's `openai` client (installed here from
# the package registry when missing), with an API key. Run from the repository root after a
# build: tests/serve/ci.sh [path/to/steermoe]
set -euo pipefail
bin="${1:-${CARGO_TARGET_DIR:-target}/debug/steermoe}"
if ! python3 -c 'import openai' 2>/dev/null; then
  python3 -m pip install -q --user openai 2>/dev/null \
    || python3 -m pip install -q --user --break-system-packages openai
fi
log=$(mktemp)
STEERMOE_CI_KEY=ci-key "$bin" serve --model tests/fixtures/olmoe-tiny --port 0 \
  --api-key-env STEERMOE_CI_KEY > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q 'http://' "$log" && break; sleep 0.2; done
url=$(grep -o 'http://[0-9.:]*/v1' "$log")
python3 tests/serve/openai_client.py "$url" olmoe-tiny ci-key
kill -TERM $pid && wait $pid
echo "the server stopped cleanly on SIGTERM"
