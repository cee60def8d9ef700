#!/usr/bin/env python3
"""Issue 11's table from kiln bench's JSON lines (scripts/gpu-bench tp): decode t/s per model and
tensor-parallel size, the speed-up over one rank, and the all-reduce time a token from the --profile stages."""
import json
import os
import sys


def all_reduce_us(row):
    """Microseconds of one decode step spent in the all-reduce stage, or None without a profile."""
    for stage in row.get("profile", []):
        if stage["stage"].startswith("all-reduce"):
            return stage["us"]
    return None


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: tp_results.py KILN.jsonl")
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    rows = [r for r in rows if r.get("n_prompt") == 0]
    one_rank = {}
    for r in rows:
        if r.get("tensor_parallel", 1) == 1:
            one_rank[(r["model"], r["test"])] = r["avg_ts"]
    print("| model | weights | test | -tp | t/s | vs -tp 1 | all-reduce µs a token | share of the step |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        tp = r.get("tensor_parallel", 1)
        base = one_rank.get((r["model"], r["test"]))
        speedup = f"{r['avg_ts'] / base:.2f}x" if base else ""
        us = all_reduce_us(r)
        share = f"{100 * us * r['avg_ts'] / 1e6:.1f}%" if us is not None else ""
        name = os.path.basename(r["model"]).removesuffix(".kiln")
        print(f"| {name} | {r['weight_dtype']} | {r['test']} | {tp} | {r['avg_ts']:.1f} | {speedup} | "
              f"{'' if us is None else f'{us:.0f}'} | {share} |")


if __name__ == "__main__":
    main()
