#!/usr/bin/env python3
"""A bounded load test of `ferrolm serve` on loopback: N concurrent streaming chat requests for
D seconds, then stop (requests in flight at the deadline are finished, within --timeout).

    ferrolm serve -m smollm2-135m-instruct &
    python3 scripts/load_test.py --concurrency 64 --duration 120 --pid $!

Every stream must answer 200, end with `data: [DONE]`, carry a finish_reason and a usage
chunk; anything else counts as an error. Prints a JSON summary: requests, errors, tokens/s,
p50/p99 time to first token and per output token, and (with --pid) the server's RSS at start
and end. Exits 1 if there were errors. Standard library only (asyncio sockets); it refuses
any host outside the loopback range.
"""

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
import time
from urllib.parse import urlparse

PROMPTS = [
    "Tell me a short story about a robot.",
    "What is the capital of France?",
    "Explain photosynthesis simply.",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
    "Why is the sky blue?",
    "Describe a cat to someone who has never seen one.",
    "Give me a recipe for pancakes.",
    "What are the planets of the solar system?",
    "How do airplanes fly?",
    "Write a limerick about a programmer.",
    "What is the difference between weather and climate?",
    "Summarise the plot of Romeo and Juliet.",
    "Name five animals that live in the ocean.",
    "What is a prime number?",
    "How does a refrigerator work?",
]


def rss_kb(pid):
    """VmRSS and VmHWM (peak) of a process, in kB, from /proc."""
    if not pid:
        return None
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
    except OSError:
        return None
    return out


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def read_body(reader, headers):
    """Yields the body's pieces (chunked or Content-Length)."""
    if "chunked" in headers.get("transfer-encoding", ""):
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    else:
        n = int(headers.get("content-length", "0"))
        if n:
            yield await reader.readexactly(n)


async def one_request(a, host, port, prompt, seed):
    """One streaming chat request; returns a record of what happened."""
    body = json.dumps(
        {
            "model": a.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": a.max_tokens,
            "temperature": a.temperature,
            "seed": seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    rec = {"ok": False}
    t0 = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            + body
        )
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while True:
            line = (await reader.readline()).decode().strip()
            if not line:
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip().lower()
        buf, done, finish, usage = b"", False, None, None
        first = last = None
        async for piece in read_body(reader, headers):
            buf += piece
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: "):
                    raise ValueError(f"bad SSE frame {event[:80]!r}")
                data = event[6:]
                if data == b"[DONE]":
                    done = True
                    continue
                msg = json.loads(data)
                if "error" in msg:
                    raise ValueError(f"error event: {msg['error'].get('message')}")
                if msg.get("usage"):
                    usage = msg["usage"]
                for ch in msg.get("choices", []):
                    if ch["delta"].get("content"):
                        now = time.perf_counter()
                        first = first or now
                        last = now
                    finish = ch.get("finish_reason") or finish
        if status != 200:
            rec["error"] = f"HTTP {status}: {buf[:200]!r}"
        elif not done:
            rec["error"] = "stream ended without [DONE]"
        elif not finish:
            rec["error"] = "no finish_reason"
        elif not usage:
            rec["error"] = "no usage chunk"
        else:
            n = usage["completion_tokens"]
            rec.update(ok=True, tokens=n, finish=finish)
            if first:
                rec["ttft"] = first - t0
                if n > 1:
                    rec["tpot"] = (last - first) / (n - 1)
    except Exception as e:  # noqa: BLE001 - every failure is a counted error
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        if writer:
            writer.close()
    rec["duration"] = time.perf_counter() - t0
    return rec


async def worker(a, host, port, wid, deadline, records):
    i = 0
    while time.perf_counter() < deadline:
        prompt = PROMPTS[(wid + i) % len(PROMPTS)]
        try:
            rec = await asyncio.wait_for(one_request(a, host, port, prompt, wid * 100003 + i), a.timeout)
        except asyncio.TimeoutError:
            rec = {"ok": False, "error": f"timed out after {a.timeout}s"}
        records.append(rec)
        i += 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the server (loopback only)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=120, help="seconds to keep starting requests")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=120, help="seconds one request may take")
    p.add_argument("--pid", type=int, help="the server's process id, for its RSS")
    a = p.parse_args()
    u = urlparse(a.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    addr = ipaddress.ip_address(socket.gethostbyname(host))
    if not addr.is_loopback:
        sys.exit(f"refusing {host} ({addr}): this load test only targets loopback addresses")
    if not (1 <= a.concurrency <= 1024 and 0 < a.duration <= 3600):
        sys.exit("--concurrency must be in 1..1024 and --duration in (0, 3600]")

    rss_start = rss_kb(a.pid)
    records = []
    t0 = time.perf_counter()

    async def run():
        deadline = time.perf_counter() + a.duration
        await asyncio.gather(*(worker(a, host, port, w, deadline, records) for w in range(a.concurrency)))

    asyncio.run(run())
    wall = time.perf_counter() - t0
    rss_end = rss_kb(a.pid)
    ok = [r for r in records if r["ok"]]
    errors = [r["error"] for r in records if not r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    ttft = [r["ttft"] for r in ok if "ttft" in r]
    tpot = [r["tpot"] for r in ok if "tpot" in r]
    ms = lambda x: None if x is None else round(x * 1000, 2)
    summary = {
        "concurrency": a.concurrency,
        "duration_s": round(wall, 2),
        "requests": len(records),
        "completed": len(ok),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "finish_reasons": {f: sum(1 for r in ok if r["finish"] == f) for f in sorted({r["finish"] for r in ok})},
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "requests_per_s": round(len(ok) / wall, 2),
        "ttft_ms": {"p50": ms(pct(ttft, 50)), "p99": ms(pct(ttft, 99))},
        "per_token_ms": {"p50": ms(pct(tpot, 50)), "p99": ms(pct(tpot, 99))},
        "rss_kb": {"start": rss_start, "end": rss_end},
    }
    print(json.dumps(summary, indent=2))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
