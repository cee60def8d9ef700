#!/usr/bin/env python3
"""Reads what scripts/gpu-bench leaves in its results folder and sets kiln beside llama.cpp.

    kiln.jsonl           kiln bench -o jsonl rows; each model file is named SHAPE.TYPE.kiln
    peer-llama-cpp.md    llama-bench markdown rows (../shared/peers/gpu-bench)

A llama.cpp row is matched to kiln's by parameter count (llama-bench prints it as "6.74 B"), weight type
(F16 = f16, Q8_0 = int8) and test name ("tg128 @ d8192" on both sides).

    python3 scripts/bench_results.py DIR     prints the comparison table (markdown)
"""
import json
import os
import re
import sys

LLAMA_TYPES = {"F16": "f16", "Q8_0": "int8", "F32": "f32", "BF16": "bf16"}

# The rows issue 13 asks for, in its order: (shape, kiln type, test, label). Other matched rows follow.
ISSUE_ROWS = [
    ("llama2-7b", "f16", "tg128", "Llama-2-7B f16 decode"),
    ("llama2-7b", "int8", "tg128", "Llama-2-7B int8 decode (llama.cpp Q8_0)"),
    ("llama3-8b", "f16", "tg128", "Llama-3-8B f16 decode"),
    ("smollm2-135m", "f16", "tg128", "SmolLM2-135M f16 decode"),
    ("smollm2-135m", "int8", "tg128", "SmolLM2-135M int8 decode (llama.cpp Q8_0)"),
    ("llama2-7b", "f16", "pp512", "Llama-2-7B f16 prefill 512"),
    ("llama2-7b", "f16", "tg128 @ d8192", "Llama-2-7B f16 decode at depth 8K"),
    ("llama2-7b", "f16", "tg128 @ d32768", "Llama-2-7B f16 decode at depth 32K"),
]


def load_kiln(path):
    """kiln rows, each with 'shape' and 'type' from its model file name (SHAPE.TYPE.kiln)."""
    rows = []
    if not os.path.exists(path):
        return rows
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        name = os.path.basename(row["model"])
        parts = name.split(".")
        row["shape"] = parts[0]
        row["type"] = parts[1] if len(parts) > 2 else row["weight_dtype"]
        rows.append(row)
    return rows


def load_llama(path):
    """llama-bench markdown rows: dicts with model, params (a number), type, test, ts, sd."""
    rows, header = [], None
    if not os.path.exists(path):
        return rows
    for line in open(path):
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "test" in cells and "t/s" in cells:
            header = cells
            continue
        if header is None or len(cells) != len(header) or set(cells[0]) <= set("-: "):
            continue
        cell = dict(zip(header, cells))
        if "params" not in cell:
            continue
        number, unit = (cell["params"].split() + [""])[:2]
        scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(unit, 1)
        ts = [float(x) for x in re.findall(r"[\d.]+", cell["t/s"])]
        type_token = cell["model"].split()[-1]
        rows.append({"model": cell["model"], "params": float(number) * scale, "params_text": cell["params"],
                     "type": LLAMA_TYPES.get(type_token, type_token.lower()), "test": cell["test"],
                     "ts": ts[0], "sd": ts[1] if len(ts) > 1 else 0.0})
    return rows


def same_params(kiln_row, llama_row):
    """llama-bench rounds the count to 2 decimals of its unit (M or B): allow that."""
    return abs(kiln_row["n_params"] - llama_row["params"]) <= 0.006 * (1e9 if llama_row["params"] >= 1e9 else 1e6)


def compare(kiln_rows, llama_rows):
    """[(label, kiln row, llama row or None)], issue rows first (those measured), then the other kiln rows."""
    def label_of(row):
        for shape, type_, test, label in ISSUE_ROWS:
            if (row["shape"], row["type"], row["test"]) == (shape, type_, test):
                return label
        return f'{row["shape"]} {row["type"]} {row["test"]}'

    def rank(row):
        keys = [(s, t, test) for s, t, test, _ in ISSUE_ROWS]
        key = (row["shape"], row["type"], row["test"])
        return keys.index(key) if key in keys else len(keys)

    out = []
    for row in sorted(kiln_rows, key=rank):
        peer = next((p for p in llama_rows if p["test"] == row["test"] and p["type"] == row["type"]
                     and same_params(row, p)), None)
        out.append((label_of(row), row, peer))
    return out


def table(kiln_rows, llama_rows):
    lines = ["| row | kiln t/s | llama.cpp t/s | kiln / llama.cpp | kiln GB/s | kiln % of bandwidth |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, row, peer in compare(kiln_rows, llama_rows):
        k = f'{row["avg_ts"]:,.1f} ± {row["stddev_ts"]:.1f}'
        l = f'{peer["ts"]:,.1f} ± {peer["sd"]:.1f}' if peer else "—"
        ratio = f'{row["avg_ts"] / peer["ts"]:.2f}' if peer and peer["ts"] > 0 else "—"
        gbs = f'{row["achieved_bandwidth_gbs"]:,.0f}' if "achieved_bandwidth_gbs" in row else ""
        pct = f'{row["bandwidth_percent"]:.0f}%' if "bandwidth_percent" in row else ""
        lines.append(f"| {label} | {k} | {l} | {ratio} | {gbs} | {pct} |")
    return "\n".join(lines)


def memory_lines(kiln_rows):
    """Per model file, the GPU memory beyond weights + KV cache + workspace (the largest over its rows)."""
    worst = {}
    for row in kiln_rows:
        if "gpu_memory_overhead_bytes" in row:
            key = f'{row["shape"]} {row["type"]}'
            if key not in worst or row["gpu_memory_overhead_percent"] > worst[key]["gpu_memory_overhead_percent"]:
                worst[key] = row
    lines = []
    for key, r in worst.items():
        gib = 1 << 30
        lines.append(f'- {key} (context {r["n_ctx"]}): GPU memory in use {r["gpu_memory_used_bytes"] / gib:.2f} GiB = '
                     f'weights {r["gpu_weights_bytes"] / gib:.2f} + KV cache {r["gpu_kv_cache_bytes"] / gib:.2f} + '
                     f'workspace {r["gpu_workspace_bytes"] / gib:.2f} + other {r["gpu_memory_overhead_bytes"] / gib:.2f} '
                     f'GiB: {r["gpu_memory_overhead_percent"]:.2f}% of the use, '
                     f'{r["gpu_memory_overhead_device_percent"]:.2f}% of the device')
    return lines


def profile_tables(kiln_rows):
    out = []
    for row in kiln_rows:
        if "profile" not in row:
            continue
        total = sum(s["us"] for s in row["profile"]) or 1
        out.append(f'\n{row["shape"]} {row["type"]} {row["test"]} ({row["backend"]}), one decode step at position '
                   f'{row["profile_position"]}; the timed runs took {1e6 / row["avg_ts"]:.1f} µs a token\n')
        out.append("| stage | µs | share | MB read | GB/s |\n| --- | ---: | ---: | ---: | ---: |")
        for s in row["profile"]:
            gbs = (f'{s["gbs"]:,.0f}' if s["gbs"] >= 100 else f'{s["gbs"]:.1f}') if s["bytes"] > 0 else ""
            out.append(f'| {s["stage"]} | {s["us"]:,.1f} | {100 * s["us"] / total:.1f}% | {s["bytes"] / 1e6:,.2f} | {gbs} |')
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    folder = sys.argv[1]
    kiln_rows = load_kiln(os.path.join(folder, "kiln.jsonl"))
    llama_rows = load_llama(os.path.join(folder, "peer-llama-cpp.md"))
    if not kiln_rows:
        sys.exit(f"no kiln rows in {folder}/kiln.jsonl: run `scripts/gpu-bench kiln` first")
    meta = os.path.join(folder, "meta.txt")
    if os.path.exists(meta):
        print(open(meta).read().rstrip() + "\n")
    if not llama_rows:
        print(f"(no llama.cpp rows in {folder}/peer-llama-cpp.md: run `scripts/gpu-bench peers`)\n")
    print(table(kiln_rows, llama_rows))
    copy = next((r["copy_bandwidth_gbs"] for r in kiln_rows if "copy_bandwidth_gbs" in r), None)
    baseline = (f"the device copy bandwidth measured in the same run, {copy:,.0f} GB/s (read + write counted)" if copy
                else f'a streaming read measured in the same run, {kiln_rows[0]["read_bandwidth_gbs"]:,.1f} GB/s')
    print(f"\nkiln's bandwidth: (weights + KV cache read per token) x t/s, against {baseline}")
    for line in memory_lines(kiln_rows):
        print(line)
    for line in profile_tables(kiln_rows):
        print(line)


if __name__ == "__main__":
    main()
