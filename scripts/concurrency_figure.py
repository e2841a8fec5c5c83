"""24 streaming chat requests against a running `ferrolm serve`: one after another, then all at
once; prints both wall times, the ratio, and whether every answer equals its answer alone.
A warm-up pass first puts every prompt's full blocks in the server's prefix cache, so both
phases start from the same cache (neither reuses what the other computed). Standard library
only.

    python3 scripts/concurrency_figure.py --url http://127.0.0.1:8080 [--model NAME] [--runs 3]
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "What is 12 times 12?",
    "Give me a synonym for happy.",
    "Which planet is known as the red planet?",
    "What is the boiling point of water?",
    "Say hello in Spanish.",
]


def stream_chat(url, model, content, max_tokens):
    """One streaming chat request; returns the concatenated content (asserts a clean end)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, (resp.status, resp.read())
    text, done = [], False
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            break
        for choice in json.loads(data).get("choices", []):
            text.append(choice.get("delta", {}).get("content") or "")
    conn.close()
    assert done, "the stream ended without [DONE]"
    return "".join(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="the server's address, without /v1")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    url = args.url.rstrip("/").removesuffix("/v1")
    prompts = [f"{QUESTIONS[i % 8]} ({i // 8})" for i in range(args.requests)]
    for p in prompts:
        stream_chat(url, args.model, p, args.max_tokens)
    ratios = []
    for run in range(args.runs):
        t = time.perf_counter()
        alone = [stream_chat(url, args.model, p, args.max_tokens) for p in prompts]
        sequential = time.perf_counter() - t
        together = [None] * len(prompts)

        def one(i):
            together[i] = stream_chat(url, args.model, prompts[i], args.max_tokens)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        concurrent = time.perf_counter() - t
        same = sum(a == b for a, b in zip(alone, together))
        ratios.append(sequential / concurrent)
        print(
            f"run {run + 1}: one after another {sequential:.2f} s, concurrently {concurrent:.2f} s: "
            f"{sequential / concurrent:.2f}x; {same}/{len(prompts)} answers equal their answer alone"
        )
        assert same == len(prompts)
    print(f"median {statistics.median(ratios):.2f}x over {len(ratios)} runs")


if __name__ == "__main__":
    main()
