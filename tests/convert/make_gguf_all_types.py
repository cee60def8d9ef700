#!/usr/bin/env python3
"""Writes the synthetic GGUF fixture tests/data/gguf_all_types.gguf with the `gguf` package: metadata of
every value type (nested arrays too), a 64-byte alignment, and tensors of each type kiln reads (F32,
F16, BF16, Q8_0, Q4_0, Q4_1) plus two it must refuse (Q5_0, Q4_K). Then reads the file back with
gguf.GGUFReader and writes what it finds to tests/data/gguf_all_types_expected.json: tensor types,
shapes (outermost first), offsets, and every dequantized value as its float32 bit pattern (exact, and
fine for inf and nan).

Usage: python3 tests/convert/make_gguf_all_types.py
"""
import json
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType as V
from gguf.quants import dequantize, quantize

REPO = Path(__file__).resolve().parents[2]
GGUF_OUT = REPO / "tests" / "data" / "gguf_all_types.gguf"
JSON_OUT = REPO / "tests" / "data" / "gguf_all_types_expected.json"


def add_metadata(writer: gguf.GGUFWriter) -> None:
    writer.add_custom_alignment(64)
    writer.add_uint8("test.u8", 200)
    writer.add_int8("test.i8", -100)
    writer.add_uint16("test.u16", 60000)
    writer.add_int16("test.i16", -30000)
    writer.add_uint32("test.u32", 4000000000)
    writer.add_int32("test.i32", -2000000000)
    writer.add_float32("test.f32", 0.1)
    writer.add_bool("test.bool_true", True)
    writer.add_bool("test.bool_false", False)
    writer.add_string("test.string", "h\u00e9llo w\u00f6rld")
    writer.add_key_value("test.empty_string", "", V.STRING)
    writer.add_uint64("test.u64", 2**63 + 5)
    writer.add_int64("test.i64", -(2**62) - 3)
    writer.add_float64("test.f64", 1.0 / 3.0)
    writer.add_key_value("test.array.u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    writer.add_key_value("test.array.i16", [-7, 0, 300], V.ARRAY, sub_type=V.INT16)
    writer.add_key_value("test.array.u64", [0, 2**64 - 1], V.ARRAY, sub_type=V.UINT64)
    writer.add_key_value("test.array.f64", [0.25, -1e300], V.ARRAY, sub_type=V.FLOAT64)
    writer.add_key_value("test.array.bool", [True, False, True], V.ARRAY, sub_type=V.BOOL)
    writer.add_array("test.array.strings", ["a", "bc", "", "\u00fc"])
    writer.add_key_value("test.array.nested", [[1, 2], [3]], V.ARRAY)
    writer.add_key_value("test.array.nested_strings", [["x"], ["y", "z"]], V.ARRAY)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "\u0120a", "b c"])
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.5, -2.25])
    writer.add_array("tokenizer.ggml.token_type", [3, 1, 1])


def special_values(shape, rng) -> np.ndarray:
    """Random values with inf, -inf, -0, nan and tiny ones mixed in, for the float types."""
    values = rng.standard_normal(shape).astype(np.float32).reshape(-1)
    values[:6] = [np.inf, -np.inf, -0.0, np.nan, 1e-7, -3e-39]
    return values.reshape(shape)


def quant_values(shape, rng) -> np.ndarray:
    values = rng.standard_normal(shape).astype(np.float32).reshape(-1)
    values[:32] *= 5e-4  # the first block gets an fp16 scale that is subnormal
    values[32:64] = 0.0  # and the second a zero scale
    return values.reshape(shape)


def add_tensors(writer: gguf.GGUFWriter) -> None:
    rng = np.random.default_rng(7)
    writer.add_tensor("f32_3d", special_values((3, 5, 7), rng))
    writer.add_tensor("f32_4d", rng.standard_normal((2, 1, 3, 4)).astype(np.float32))
    writer.add_tensor("f32_1", np.array([42.5], dtype=np.float32))
    writer.add_tensor("f16_2d", special_values((2, 33), rng).astype(np.float16))
    writer.add_tensor("bf16_2d", quantize(special_values((5, 3), rng), Q.BF16), raw_dtype=Q.BF16)
    for name, shape, qtype in [("q8_0", (3, 64), Q.Q8_0), ("q4_0", (2, 2, 96), Q.Q4_0),
                               ("q4_1", (4, 64), Q.Q4_1), ("q4_1_1d", (96,), Q.Q4_1),
                               ("q5_0", (2, 32), Q.Q5_0)]:
        writer.add_tensor(name, quantize(quant_values(shape, rng), qtype), raw_dtype=qtype)
    # No quantizer for K-quants here: random bytes are enough to be listed and refused.
    q4_k = rng.integers(0, 256, (2, 144), dtype=np.uint8)
    writer.add_tensor("q4_k", q4_k, raw_dtype=Q.Q4_K)


def expected(reader: GGUFReader) -> dict:
    tensors = []
    for t in reader.tensors:
        entry = {
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": [int(d) for d in reversed(t.shape)],
            "offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
        }
        if t.tensor_type in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1):
            values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
            entry["bits"] = [int(b) for b in values.view(np.uint32)]
        tensors.append(entry)
    return {"version": int(reader.fields["GGUF.version"].contents()), "alignment": int(reader.alignment),
            "data_offset": int(reader.data_offset), "tensors": tensors}


def main() -> None:
    writer = gguf.GGUFWriter(str(GGUF_OUT), arch="test")
    add_metadata(writer)
    add_tensors(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    JSON_OUT.write_text(json.dumps(expected(GGUFReader(str(GGUF_OUT)))) + "\n")
    print(f"wrote {GGUF_OUT} ({GGUF_OUT.stat().st_size} bytes) and {JSON_OUT} ({JSON_OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
