#!/usr/bin/env python3
"""The fine-tuning task of docs/finetune.md: dates written out in words, converted to ISO 8601.

Each line is a chat: {"messages": [{"role": "user", "content": "Convert to ISO 8601: March 5,
2021"}, {"role": "assistant", "content": "2021-03-05"}]}. Dates are drawn uniformly from
1900-2099 with a fixed seed; the train and test files share no date. The phrasing varies
(month first or day first, with or without a weekday, "of"), so the model must learn the
conversion, not a template.

Usage: scripts/gen_finetune_task.py [--out DIR] [--train 400] [--test 100] [--seed 0]
Writes DIR/train.jsonl and DIR/test.jsonl (default DIR: target/finetune-task).
"""
import argparse
import datetime
import json
import os
import random

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def ordinal(n):
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }".replace(" ", "")


def phrase(d, rng):
    m, day = MONTHS[d.month - 1], d.day
    forms = [
        f"{m} {day}, {d.year}",
        f"{day} {m} {d.year}",
        f"the {ordinal(day)} of {m} {d.year}",
        f"{DAYS[d.weekday()]}, {m} {day}, {d.year}",
        f"{m} {ordinal(day)}, {d.year}",
    ]
    return rng.choice(forms)


def example(d, rng):
    return {"messages": [
        {"role": "user", "content": f"Convert to ISO 8601: {phrase(d, rng)}"},
        {"role": "assistant", "content": d.isoformat()},
    ]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="target/finetune-task")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    start, span = datetime.date(1900, 1, 1), (datetime.date(2099, 12, 31) - datetime.date(1900, 1, 1)).days
    dates = set()
    while len(dates) < a.train + a.test:
        dates.add(start + datetime.timedelta(days=rng.randrange(span + 1)))
    dates = sorted(dates)
    rng.shuffle(dates)
    os.makedirs(a.out, exist_ok=True)
    for name, part in [("train", dates[:a.train]), ("test", dates[a.train:])]:
        with open(os.path.join(a.out, f"{name}.jsonl"), "w") as f:
            for d in part:
                f.write(json.dumps(example(d, rng)) + "\n")
    print(f"{a.train} training and {a.test} test examples in {a.out}")


if __name__ == "__main__":
    main()
