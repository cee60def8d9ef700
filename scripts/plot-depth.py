#!/usr/bin/env python3
"""Plots decode speed against context depth, kiln beside llama.cpp, from a scripts/gpu-bench results folder.

    python3 scripts/plot-depth.py RESULTS_DIR [-o docs/decode_depth.png] [--shape llama2-7b] [--type f16]

Reads kiln's tg rows (kiln.jsonl) and llama.cpp's (peer-llama-cpp.md) of one shape and type at every depth
measured (0, 8K, 32K in gpu-bench's rows). Needs matplotlib (pip install matplotlib).
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_results  # noqa: E402


def depth_of(test):
    match = re.fullmatch(r"tg(\d+)(?: @ d(\d+))?", test)
    return int(match.group(2) or 0) if match else None


def series(kiln_rows, llama_rows, shape, type_):
    """{depth: t/s} for kiln and for llama.cpp (generation tests only)."""
    kiln = {depth_of(r["test"]): r["avg_ts"] for r in kiln_rows
            if r["shape"] == shape and r["type"] == type_ and depth_of(r["test"]) is not None}
    params = next((r for r in kiln_rows if r["shape"] == shape), None)
    llama = {}
    if params is not None:
        llama = {depth_of(p["test"]): p["ts"] for p in llama_rows
                 if p["type"] == type_ and depth_of(p["test"]) is not None and bench_results.same_params(params, p)}
    return kiln, llama


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("-o", "--output", default=os.path.join(os.path.dirname(__file__), "..", "docs", "decode_depth.png"))
    ap.add_argument("--shape", default="llama2-7b")
    ap.add_argument("--type", default="f16")
    args = ap.parse_args()
    kiln_rows = bench_results.load_kiln(os.path.join(args.results, "kiln.jsonl"))
    llama_rows = bench_results.load_llama(os.path.join(args.results, "peer-llama-cpp.md"))
    kiln, llama = series(kiln_rows, llama_rows, args.shape, args.type)
    if len(kiln) < 2:
        sys.exit(f"kiln.jsonl has {len(kiln)} decode depths for {args.shape} {args.type}: nothing to plot")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, points, style in (("kiln", kiln, "o-"), ("llama.cpp", llama, "s--")):
        if points:
            depths = sorted(points)
            ax.plot(depths, [points[d] for d in depths], style, label=name)
            for d in depths:
                ax.annotate(f"{points[d]:.0f}", (d, points[d]), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=8)
    depths = sorted(set(kiln) | set(llama))
    ax.set_xticks(depths, [f"{d // 1024}K" if d >= 1024 and d % 1024 == 0 else str(d) for d in depths])
    device = next((r["backend"] for r in kiln_rows), "")
    meta = os.path.join(args.results, "meta.txt")
    if os.path.exists(meta):  # the GPU's name, as nvidia-smi gave it
        line = next((l for l in open(meta) if l.startswith("device: ")), "")
        device = line[len("device: "):].split(",")[0].strip() or device
    ax.set_title(f"{args.shape} {args.type} decode, batch 1, {device}")
    ax.set_xlabel("tokens already in the KV cache")
    ax.set_ylabel("generated tokens / s")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output)
    print(f"wrote {args.output}: kiln {dict(sorted(kiln.items()))}, llama.cpp {dict(sorted(llama.items()))}")


if __name__ == "__main__":
    main()
