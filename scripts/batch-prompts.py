#!/usr/bin/env python3
"""Writes issue 14's mixed-length batch input: N JSON lines {"id", "prompt", "max_tokens"} whose prompts
are LOW..HIGH tokens long (uniform, from a fixed seed) under a synthetic model's tokenizer
(`kiln convert --synthetic`): its pieces are "t<number>", so a letter other than t is one byte token.
Each prompt also gets BOS and the three byte tokens of the leading space, which the lengths count.

  scripts/batch-prompts.py OUT.jsonl [--lines 1000] [--low 32] [--high 1024] [--new 256] [--seed 1]
"""
import argparse
import json
import random

LETTERS = "abcdefghijklmnopqrsuvwxyz"  # no t: "t" followed by digits could be one piece
EXTRA_TOKENS = 4  # BOS and the UTF-8 bytes of the space prefix U+2581


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--low", type=int, default=32)
    ap.add_argument("--high", type=int, default=1024)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if not EXTRA_TOKENS < a.low <= a.high:
        ap.error(f"need {EXTRA_TOKENS} < --low <= --high")
    rng = random.Random(a.seed)
    with open(a.out, "w") as f:
        for i in range(a.lines):
            n = rng.randint(a.low, a.high) - EXTRA_TOKENS
            prompt = "".join(rng.choice(LETTERS) for _ in range(n))
            f.write(json.dumps({"id": f"p{i}", "prompt": prompt, "max_tokens": a.new}) + "\n")


if __name__ == "__main__":
    main()
