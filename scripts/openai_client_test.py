#!/usr/bin/env python3
"""Checks a running `ferrolm serve` with the official `openai` Python package as the client.

    pip install openai
    ferrolm serve -m smollm2-135m-instruct -m all-minilm-l6-v2 &
    python3 scripts/openai_client_test.py [--base-url http://127.0.0.1:8080/v1]
        [--model smollm2-135m-instruct] [--embed-model all-minilm-l6-v2]

Chat and completions, streaming and not, n=2, stop, seed, logprobs, usage, embeddings (the
client asks for base64 by default), structured output (`response_format` json_schema and
json_object) and error cases. Prints one line per check and exits
non-zero if any failed.
"""

import argparse
import json
import sys
import traceback

import openai
from openai import OpenAI

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def greedy_chat(c, model, content, **kw):
    return c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        **kw,
    )


@check
def models_list(c, a):
    ids = [m.id for m in c.models.list()]
    expect(a.model in ids, f"{a.model} not in {ids}")
    expect(c.models.retrieve(a.model).id == a.model, "retrieve")


@check
def chat_non_stream(c, a):
    r = greedy_chat(c, a.model, "What is the capital of France?", max_tokens=16)
    expect(r.object == "chat.completion", r.object)
    ch = r.choices[0]
    expect(ch.message.role == "assistant" and ch.message.content, repr(ch.message))
    expect(ch.finish_reason in ("stop", "length"), ch.finish_reason)
    u = r.usage
    expect(u.total_tokens == u.prompt_tokens + u.completion_tokens, repr(u))
    expect(0 < u.completion_tokens <= 16, repr(u))
    expect(u.prompt_tokens_details.cached_tokens <= u.prompt_tokens, repr(u))


@check
def chat_stream_matches_non_stream(c, a):
    q = "Name three animals."
    want = greedy_chat(c, a.model, q, max_tokens=20).choices[0].message.content
    stream = greedy_chat(
        c, a.model, q, max_tokens=20, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage, roles = "", None, None, 0
    for chunk in stream:
        expect(chunk.object == "chat.completion.chunk", chunk.object)
        if chunk.usage is not None:
            usage = chunk.usage
            expect(chunk.choices == [], "the usage chunk has no choices")
            continue
        d = chunk.choices[0]
        roles += d.delta.role == "assistant"
        text += d.delta.content or ""
        if d.finish_reason:
            finish = d.finish_reason
    expect(roles == 1, f"{roles} role deltas")
    expect(text == want, f"stream {text!r} != {want!r}")
    expect(finish in ("stop", "length"), finish)
    expect(usage is not None and usage.completion_tokens > 0, repr(usage))


@check
def max_completion_tokens(c, a):
    r = c.chat.completions.create(
        model=a.model,
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_completion_tokens=5,
        extra_body={"ignore_eos": True},
    )
    expect(r.usage.completion_tokens == 5, repr(r.usage))
    expect(r.choices[0].finish_reason == "length", r.choices[0].finish_reason)


@check
def completions_stream_and_not(c, a):
    kw = dict(model=a.model, prompt="The three primary colours are", max_tokens=12, temperature=0)
    r = c.completions.create(**kw)
    expect(r.object == "text_completion", r.object)
    want = r.choices[0].text
    expect(r.usage.completion_tokens > 0, repr(r.usage))
    text, usage = "", None
    for chunk in c.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            text += ch.text
    expect(text == want, f"stream {text!r} != {want!r}")
    expect(usage is not None and usage.completion_tokens == r.usage.completion_tokens, repr(usage))


@check
def n_and_seed(c, a):
    kw = dict(
        model=a.model,
        messages=[{"role": "user", "content": "Write a word."}],
        n=2,
        seed=11,
        max_tokens=8,
    )
    r1 = c.chat.completions.create(**kw)
    r2 = c.chat.completions.create(**kw)
    t1 = [ch.message.content for ch in r1.choices]
    expect([ch.index for ch in r1.choices] == [0, 1], "indices")
    expect(t1 == [ch.message.content for ch in r2.choices], "same seed, same choices")
    # Streaming n=2: both indices appear and finish.
    done = set()
    for chunk in c.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            if ch.finish_reason:
                done.add(ch.index)
    expect(done == {0, 1}, f"finished choices {done}")


@check
def stop_strings(c, a):
    q = "Count from one to ten."
    full = greedy_chat(c, a.model, q, max_tokens=40).choices[0].message.content
    expect(len(full) >= 8, f"answer too short to cut: {full!r}")
    stop = full[len(full) // 2 :][:3]
    r = greedy_chat(c, a.model, q, max_tokens=40, stop=[stop, "zzz-never"])
    text = r.choices[0].message.content
    expect(r.choices[0].finish_reason == "stop", r.choices[0].finish_reason)
    # Greedy: the same answer, cut before the stop string's first occurrence.
    expect(text == full[: full.index(stop)], f"{text!r} (stop {stop!r}) vs {full!r}")


@check
def logprobs(c, a):
    r = greedy_chat(c, a.model, "Say hello.", max_tokens=5, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    expect(len(content) > 0, "no logprobs")
    for t in content:
        expect(t.logprob <= 0 and len(t.top_logprobs) == 3, repr(t))
        expect(t.token == t.top_logprobs[0].token, "greedy picks the top token")
    expect("".join(t.token for t in content) == r.choices[0].message.content, "tokens join to content")
    r = c.completions.create(model=a.model, prompt="One, two,", max_tokens=4, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    expect(len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs), repr(lp))


@check
def embeddings(c, a):
    if not a.embed_model:
        print("  (skipped: no --embed-model)")
        return
    r = c.embeddings.create(model=a.embed_model, input=["a cat", "a dog", "quantum physics"])
    v = [d.embedding for d in r.data]
    expect(len(v) == 3 and len(v[0]) > 0, "three vectors")
    dot = lambda x, y: sum(p * q for p, q in zip(x, y))
    expect(abs(dot(v[0], v[0]) - 1) < 1e-3, "normalised")
    expect(dot(v[0], v[1]) > dot(v[0], v[2]), "cat is nearer dog than physics")
    f = c.embeddings.create(model=a.embed_model, input="a cat", encoding_format="float")
    expect(max(abs(p - q) for p, q in zip(f.data[0].embedding, v[0])) < 1e-6, "float == base64")


@check
def structured_output(c, a):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "pets": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": False,
    }
    r = c.chat.completions.create(
        model=a.model,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        temperature=0.7,
        seed=1,
        n=2,
        max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": schema}},
    )
    for ch in r.choices:
        v = json.loads(ch.message.content)
        expect(set(v) == {"name", "age", "pets"} and isinstance(v["age"], int), repr(v))
        expect(ch.finish_reason == "stop", ch.finish_reason)
    text = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(
            model=a.model,
            messages=[{"role": "user", "content": "Give a JSON object with the keys name and age of a cat."}],
            temperature=0,
            max_tokens=300,
            stream=True,
            response_format={"type": "json_object"},
        )
        if ch.choices
    )
    expect(isinstance(json.loads(text), dict), repr(text))


@check
def errors(c, a):
    try:
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        expect(False, "unknown model accepted")
    except openai.NotFoundError as e:
        expect(e.status_code == 404 and e.code == "model_not_found", repr(e.body))
    try:
        c.chat.completions.create(
            model=a.model, messages=[{"role": "user", "content": "hi"}], temperature=5
        )
        expect(False, "temperature 5 accepted")
    except openai.BadRequestError as e:
        expect(e.status_code == 400 and e.param == "temperature", repr(e.body))
    try:
        c.chat.completions.create(
            model=a.model,
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}},
        )
        expect(False, "a bad JSON schema accepted")
    except openai.BadRequestError as e:
        expect(e.param == "response_format", repr(e.body))
    try:
        c.completions.create(model=a.model, prompt="hi " * 20000, max_tokens=1)
        expect(False, "over-long prompt accepted")
    except openai.BadRequestError as e:
        expect(e.code == "context_length_exceeded", repr(e.body))


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}


@check
def tool_calls(c, a):
    if not a.tools:
        return
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = c.chat.completions.create(model=a.model, messages=ask, tools=[WEATHER], tool_choice="required",
                                  temperature=0, max_tokens=64)
    ch = r.choices[0]
    expect(ch.finish_reason == "tool_calls", ch.finish_reason)
    call = ch.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    expect(call.type == "function" and call.function.name == "get_weather", repr(call))
    expect(isinstance(args["city"], str) and args["unit"] in ("celsius", "fahrenheit"), repr(args))
    # Streamed: the call assembled from deltas equals the one above.
    name, arguments, finish = "", "", None
    for chunk in c.chat.completions.create(model=a.model, messages=ask, tools=[WEATHER], tool_choice="required",
                                           temperature=0, max_tokens=64, stream=True):
        d = chunk.choices[0].delta
        for tc in d.tool_calls or []:
            name += tc.function.name or ""
            arguments += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    expect((name, json.loads(arguments), finish) == ("get_weather", args, "tool_calls"), (name, arguments, finish))
    # The result goes back, and the model answers.
    follow = ask + [ch.message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18}'}]
    r = c.chat.completions.create(model=a.model, messages=follow, tools=[WEATHER], temperature=0, max_tokens=16)
    expect(r.choices[0].message.content is not None, repr(r.choices[0].message))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--embed-model", default=None)
    p.add_argument("--tools", action="store_true", help="the model is served with a chat template that takes tools")
    a = p.parse_args()
    c = OpenAI(base_url=a.base_url, api_key="none", max_retries=0, timeout=120)
    passed = failed = 0
    for fn in CHECKS:
        try:
            fn(c, a)
            print(f"ok   {fn.__name__}")
            passed += 1
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            print(f"FAIL {fn.__name__}: {e}")
            traceback.print_exc(limit=2)
            failed += 1
    print(f"(openai {openai.__version__} against {a.base_url})")
    print(f"openai_client_test: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
