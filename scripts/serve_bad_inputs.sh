#!/usr/bin/env bash
# Bad and unlucky requests against a real `ferrolm serve`, with curl: prints each request, the
# HTTP status and the body, and checks the status. Then a stream cancelled mid-way (its KV
# blocks freed, read from /metrics), a full queue (429 with Retry-After), and SIGTERM in the
# middle of load (the server exits 0). Needs the release binary and SmolLM2 plus
# all-MiniLM-L6-v2 (ferrolm pull NAME). About 30 s.
#
#   bash scripts/serve_bad_inputs.sh [PATH_TO_FERROLM]
set -uo pipefail
cd "$(dirname "$0")/.."

target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=${1:-$target/release/ferrolm}
log=$(mktemp)
body=$(mktemp)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  rm -f "$log" "$body"
}
trap cleanup EXIT

# start_server ARGS...: starts it on a free port and sets $url and $pid.
start_server() {
  : >"$log"
  "$bin" serve --port 0 "$@" 2>"$log" &
  pid=$!
  pids+=("$pid")
  url=""
  for _ in $(seq 1 240); do
    url=$(sed -n 's|.* at \(http://[^ ]*\) (.*|\1|p' "$log")
    [ -n "$url" ] && { url=${url%/v1}; return 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  cat "$log"
  echo "the server did not start"
  exit 1
}

failures=0
# try NAME WANT_STATUS PATH [CURL ARGS...]: one request, its status and body.
try() {
  local name=$1 want=$2 path=$3
  shift 3
  local got
  got=$(curl -s -o "$body" -w '%{http_code}' "$url$path" "$@")
  local mark=ok
  [ "$got" = "$want" ] || { mark="FAILED (wanted $want)"; failures=$((failures + 1)); }
  echo "== $name: HTTP $got $mark"
  head -c 600 "$body"
  echo
}
post() { try "$1" "$2" "$3" -H 'Content-Type: application/json' --data-binary "$4"; }

start_server -m smollm2-135m-instruct -m all-minilm-l6-v2 --ctx 512
chat=/v1/chat/completions
m='"model": "smollm2-135m-instruct"'
msgs='"messages": [{"role": "user", "content": "Hi"}]'
post "invalid JSON" 400 $chat '{"model": "smollm2-135m-instruct", "messages": [ '
post "not an object" 400 $chat '[1, 2, 3]'
post "missing messages" 400 $chat "{$m}"
post "missing model" 400 $chat "{$msgs}"
post "messages of the wrong type" 400 $chat "{$m, \"messages\": \"Hi\"}"
post "a message without content" 400 $chat "{$m, \"messages\": [{\"role\": \"user\"}]}"
post "an unknown role" 400 $chat "{$m, \"messages\": [{\"role\": \"wizard\", \"content\": \"Hi\"}]}"
post "max_tokens of the wrong type" 400 $chat "{$m, $msgs, \"max_tokens\": \"ten\"}"
post "unknown model" 404 $chat "{\"model\": \"gpt-5\", $msgs}"
post "temperature out of range" 400 $chat "{$m, $msgs, \"temperature\": 7}"
post "top_p out of range" 400 $chat "{$m, $msgs, \"top_p\": 1.5}"
post "negative max_tokens" 400 $chat "{$m, $msgs, \"max_tokens\": -1}"
post "n out of range" 400 $chat "{$m, $msgs, \"n\": 1000}"
post "presence_penalty out of range" 400 $chat "{$m, $msgs, \"presence_penalty\": 3}"
post "top_logprobs out of range" 400 $chat "{$m, $msgs, \"logprobs\": true, \"top_logprobs\": 50}"
post "logit_bias with a bad token" 400 $chat "{$m, $msgs, \"logit_bias\": {\"abc\": 5}}"
post "a bad response_format" 400 $chat "{$m, $msgs, \"response_format\": {\"type\": \"yaml\"}}"
long=$(python3 -c 'print("word " * 3000)')
post "a prompt longer than the context" 400 $chat "{$m, \"messages\": [{\"role\": \"user\", \"content\": \"$long\"}]}"
post "chat on an embedding model" 400 $chat "{\"model\": \"all-minilm-l6-v2\", $msgs}"
post "embeddings: input of the wrong type" 400 /v1/embeddings '{"model": "all-minilm-l6-v2", "input": 5}'
post "completions: missing prompt" 400 /v1/completions "{$m}"
try "an unknown path" 404 /v1/nothing
try "GET on a POST endpoint" 405 $chat
post "still serving" 200 $chat "{$m, $msgs, \"max_tokens\": 4}"

# A stream cancelled mid-way: its blocks are freed at once. (`logit_bias` bans the end tokens,
# <|endoftext|> = 0 and <|im_end|> = 2, so the answer runs until the client hangs up.)
noend='"logit_bias": {"0": -100, "2": -100}'
metric() { curl -s "$url/metrics" | awk -v k="$1" 'index($1, k "{model=\"smollm2") == 1 { print $2 }'; }
blocks() { echo "KV blocks in use $(metric ferrolm_kv_blocks_used) (of them cached $(metric ferrolm_kv_blocks_cached)), running $(metric ferrolm_running)"; }
echo "== a cancelled stream"
echo "before: $(blocks)"
curl -sN "$url$chat" -H 'Content-Type: application/json' --max-time 1 \
  --data-binary "{$m, \"messages\": [{\"role\": \"user\", \"content\": \"Tell me a long story.\"}], \"max_tokens\": 450, \"stream\": true, $noend}" \
  >"$body" 2>/dev/null &
sleep 0.5
echo "streaming: $(blocks)"
wait $!
echo "received $(grep -c '^data: ' "$body") chunks, then the client hung up"
sleep 0.3
used=$(metric ferrolm_kv_blocks_used)
cached=$(metric ferrolm_kv_blocks_cached)
echo "after: $(blocks)"
echo "$(curl -s "$url/metrics" | grep -E '^ferrolm_requests_(cancelled|finished)_total\{model="smollm2' | tr '\n' ' ')"
if [ "$used" != "$cached" ] || [ "$(metric ferrolm_requests_cancelled_total)" != 1 ]; then
  echo "FAILED: the cancel was not counted, or blocks are held outside the prefix cache"
  failures=$((failures + 1))
fi
kill -TERM "$pid"
wait "$pid" || { echo "FAILED: exit $?"; failures=$((failures + 1)); }

# A full queue: 429 with Retry-After.
start_server -m smollm2-135m-instruct --max-running 1 --queue 1
slow="{$m, $msgs, \"max_tokens\": 200, $noend}"
for _ in 1 2 3; do
  curl -s -o /dev/null "$url$chat" -H 'Content-Type: application/json' --data-binary "$slow" &
done
sleep 0.3
echo "== a full queue"
code=$(curl -s -D - -o "$body" -w '%{http_code}' "$url$chat" -H 'Content-Type: application/json' \
  --data-binary "$slow" | grep -i -E '^retry-after|^[0-9]{3}$' | tr -d '\r' | tr '\n' ' ')
echo "HTTP status and Retry-After: $code"
head -c 400 "$body"
echo
case "$code" in *429*) ;; *) echo "FAILED: no 429"; failures=$((failures + 1)) ;; esac
kill -TERM "$pid"
wait "$pid"
wait

# SIGTERM in the middle of load: in-flight streams end, the process exits 0.
start_server -m smollm2-135m-instruct
echo "== SIGTERM mid-load (32 streams)"
for _ in $(seq 1 32); do
  curl -sN -o /dev/null "$url$chat" -H 'Content-Type: application/json' \
    --data-binary "{$m, $msgs, \"max_tokens\": 100, \"stream\": true}" &
done
sleep 1.5
kill -TERM "$pid"
if wait "$pid"; then echo "the server exited 0"; else
  echo "FAILED: the server exited $?"
  failures=$((failures + 1))
fi
wait
grep -E 'stop|shut' "$log" | tail -3

echo
if [ "$failures" = 0 ]; then echo "all checks held"; else echo "$failures checks FAILED"; fi
exit $((failures > 0))
