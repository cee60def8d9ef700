#!/usr/bin/env python3
"""Writes the safetensors fixtures with the `safetensors` package:
- tests/data/safetensors_small.safetensors: F32/F16/BF16 tensors of odd shapes (an empty one too)
  with inf, nan, -0 and subnormals, small integer and bool tensors, and an I64 one;
- tests/data/hf_sharded/: a tiny Hugging Face folder whose weights are split over two shards named by
  model.safetensors.index.json, plus config.json and tokenizer files;
- tests/data/safetensors_expected.json: for every tensor its dtype, shape, absolute byte offset and
  (where it reads as f32) every value as a float32 bit pattern.
BF16 has no numpy dtype, so its bit patterns are chosen here and written as raw bytes.

Usage: python3 tests/convert/make_safetensors_fixtures.py
"""
import json
import struct
from pathlib import Path

import numpy as np
from safetensors import TensorSpec, serialize_file

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
SMALL = DATA / "safetensors_small.safetensors"
HF_DIR = DATA / "hf_sharded"
EXPECTED = DATA / "safetensors_expected.json"

NUMPY_DTYPES = {np.float32: "F32", np.float16: "F16", np.int8: "I8", np.uint8: "U8", np.int16: "I16",
                np.int64: "I64", np.bool_: "BOOL"}
SPEC_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8", "U8": "uint8",
               "I16": "int16", "I64": "int64", "BOOL": "bool"}


class Tensor:
    """One tensor to write: its safetensors dtype, shape, raw little-endian values, and f32 bits when
    kiln reads it."""

    def __init__(self, dtype: str, shape: tuple, raw: np.ndarray, f32_bits):
        self.dtype, self.shape, self.f32_bits = dtype, list(shape), f32_bits
        self.raw = np.ascontiguousarray(raw)

    def spec(self) -> TensorSpec:
        return TensorSpec(dtype=SPEC_DTYPES[self.dtype], shape=tuple(self.shape), data_ptr=self.raw.ctypes.data,
                          data_len=self.raw.nbytes)


def from_numpy(array: np.ndarray, readable: bool = True) -> Tensor:
    array = np.ascontiguousarray(array)
    bits = [int(b) for b in array.astype(np.float32).reshape(-1).view(np.uint32)] if readable else None
    return Tensor(NUMPY_DTYPES[array.dtype.type], array.shape, array, bits)


def bf16(shape: tuple, rng) -> Tensor:
    patterns = rng.integers(0, 1 << 16, int(np.prod(shape)), dtype=np.uint32).astype(np.uint16)
    patterns[:4] = [0x7F80, 0xFF80, 0x8000, 0x0001]  # inf, -inf, -0, the smallest subnormal
    bits = [int(p) << 16 for p in patterns]
    return Tensor("BF16", shape, patterns.astype("<u2"), bits)


def special_f32(shape: tuple, rng) -> np.ndarray:
    values = rng.standard_normal(shape).astype(np.float32).reshape(-1)
    values[:5] = [np.inf, np.nan, -0.0, 1e-40, -1e-45]
    return values.reshape(shape)


def write(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    serialize_file({name: t.spec() for name, t in tensors.items()}, str(path), metadata=metadata)


def describe(path: Path, tensors: dict) -> dict:
    """Offsets from the file's own header, values from what was written."""
    raw = path.read_bytes()
    (header_bytes,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_bytes])
    entries = []
    for name in sorted(tensors):
        t = tensors[name]
        begin, end = header[name]["data_offsets"]
        entry = {"name": name, "dtype": t.dtype, "shape": t.shape, "offset": 8 + header_bytes + begin,
                 "n_bytes": end - begin}
        if t.f32_bits is not None:
            entry["bits"] = t.f32_bits
        entries.append(entry)
    return {"file": path.name, "tensors": entries}


def small_tensors(rng) -> dict:
    f16 = special_f32((7,), rng).astype(np.float16)
    f16[5] = np.float16(6e-8)  # an fp16 subnormal
    return {
        "a.f32": from_numpy(special_f32((3, 5), rng)),
        "b.f16": from_numpy(f16),
        "c.bf16": bf16((2, 3, 4), rng),
        "d.one": from_numpy(np.array([2.5], dtype=np.float32)),
        "e.empty": from_numpy(np.zeros((0, 3), dtype=np.float32)),
        "f.i8": from_numpy(np.array([-128, -1, 0, 5, 127], dtype=np.int8)),
        "g.u8": from_numpy(np.array([0, 200, 255], dtype=np.uint8)),
        "h.i16": from_numpy(np.array([-32768, 7, 32767], dtype=np.int16)),
        "i.bool": from_numpy(np.array([True, False, False, True])),
        "j.i64": from_numpy(np.array([1, -(2**40)], dtype=np.int64), readable=False),
    }


def write_hf_folder(rng) -> list:
    HF_DIR.mkdir(exist_ok=True)
    shards = {
        "model-00001-of-00002.safetensors": {
            "model.embed_tokens.weight": bf16((6, 4), rng),
            "model.layers.0.input_layernorm.weight": from_numpy(special_f32((8,), rng)),
        },
        "model-00002-of-00002.safetensors": {
            "model.layers.0.mlp.down_proj.weight": from_numpy(rng.standard_normal((4, 5)).astype(np.float16)),
            "model.norm.weight": from_numpy(rng.standard_normal((4,)).astype(np.float32)),
            "lm_head.weight": bf16((6, 4), rng),
        },
    }
    weight_map = {}
    described = []
    for file_name, tensors in shards.items():
        write(HF_DIR / file_name, tensors, {"format": "pt"})
        weight_map.update({name: file_name for name in tensors})
        described.append(describe(HF_DIR / file_name, tensors))
    index = {"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}
    (HF_DIR / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4,
              "note": "layer shapes are not consistent: only the reader is tested",
              "intermediate_size": 5, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 1, "vocab_size": 6, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}
    (HF_DIR / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (HF_DIR / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}) + "\n")
    (HF_DIR / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}) + "\n")
    return described


def main() -> None:
    rng = np.random.default_rng(11)
    tensors = small_tensors(rng)
    write(SMALL, tensors, {"format": "pt"})  # one key: the writer orders keys at random
    expected = {"small": describe(SMALL, tensors), "hf_shards": write_hf_folder(rng)}
    EXPECTED.write_text(json.dumps(expected) + "\n")
    print(f"wrote {SMALL} ({SMALL.stat().st_size} bytes), {HF_DIR}/ and {EXPECTED}")


if __name__ == "__main__":
    main()
