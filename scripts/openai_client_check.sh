#!/usr/bin/env bash
# The official `openai` Python client against a real `ferrolm serve`: installs `openai` into
# target/openai-venv (once), starts the server on a free loopback port with SmolLM2 and
# all-MiniLM-L6-v2 (SmolLM2 with a chat template that takes tools), runs
# scripts/openai_client_test.py, then stops the server with SIGTERM and
# checks that it exits 0. Needs the release binary (cargo build --release) and the two catalog
# models (ferrolm pull NAME). About 15 s, most of it the first pip install.
#
#   bash scripts/openai_client_check.sh [PATH_TO_FERROLM]
set -euo pipefail
cd "$(dirname "$0")/.."

target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=${1:-$target/release/ferrolm}
venv=$target/openai-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import openai' 2>/dev/null || "$venv/bin/pip" install -q openai

log=$(mktemp)
"$bin" serve -m smollm2-135m-instruct -m all-minilm-l6-v2 --port 0 \
  --chat-template smollm2-135m-instruct=fixtures/templates/chatml-tools.jinja 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
url=""
for _ in $(seq 1 240); do
  url=$(sed -n 's|.* at \(http://[^ ]*\) (.*|\1|p' "$log")
  [ -n "$url" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "the server did not start"; exit 1; }
  sleep 0.25
done
[ -n "$url" ] || { cat "$log"; echo "the server did not start in time"; exit 1; }

status=0
"$venv/bin/python" scripts/openai_client_test.py --base-url "$url" --embed-model all-minilm-l6-v2 --tools || status=$?
kill -TERM "$pid"
if wait "$pid"; then echo "SIGTERM: the server exited 0"; else
  echo "SIGTERM: the server exited $?"; status=1; fi
exit $status
