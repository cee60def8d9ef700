#!/usr/bin/env python3
"""Builds tiny random Hugging Face causal LMs (Llama; Mistral and Qwen2, which share its tensor names; one
each of GPT-2, GPT-NeoX, GPT-J and BLOOM for the other family features; OPT with its LayerNorm before and
after each block) and their reference logits for the engine parity tests, and a tiny BERT encoder with its
reference hidden states.

For each model, tests/data/tiny_<name>/ receives:
  config.json, model.safetensors   the Hugging Face folder (HF tensor names), as save_pretrained writes it,
                                   so the converter can be checked against the same references; f32 weights
                                   (f16 for BLOOM, whose 4x-wide MLP would not fit the 1 MB budget in f32)
  kiln_config.json                 the kiln ModelConfig fields ("model" object of docs/FORMAT.md)
  reference.safetensors            for each prompt i:
      prompt<i>.tokens     I32 [n]           the token ids
      prompt<i>.positions  I32 [m]           the positions whose full logits are kept
      prompt<i>.logits     F32 [m, n_vocab]  logits at those positions
      prompt<i>.max        F32 [n]           for every position: the largest logit,
      prompt<i>.argmax     I32 [n]           its token,
      prompt<i>.logsumexp  F32 [n]           and the log-sum-exp of the row
  (BERT, which has no LM head, instead: prompt<i>.tokens I32 [n] and prompt<i>.hidden F32 [n, dim], the
  encoder's last hidden state)

The reference runs in float64 so it is the exact answer for the stored f32 weights. Needs torch and
transformers (fixture generation only; the tests read the committed files). Run from anywhere:
  python3 tests/engine/make_tiny_models.py [NAME...]
With names, only those fixtures are rebuilt (each model has its own seed, so the others stay as they are).
"""

import json
import pathlib
import sys

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import (BertConfig, BertModel, BloomConfig, BloomForCausalLM, GPT2Config, GPT2LMHeadModel, GPTJConfig, GPTJForCausalLM,
                          GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM)

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"
PROMPT_LENGTHS = (5, 37, 320)
KEPT_POSITIONS = (0, 1, 2, 3, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257)
LAST_KEPT = 8

LLAMA_MODELS = {
    # GQA (4 query heads share 2 KV heads), tied embeddings, default rope.
    "llama_gqa_tied": dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5),
    # Plain multi-head attention, untied LM head, large rope theta.
    "llama_mha": dict(
        vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-6),
    # One KV head (MQA), head_dim 24 so q_dim (48) differs from dim (64), linear rope scaling.
    "llama_rope_linear": dict(
        vocab_size=256, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=24, tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "linear", "factor": 2.0}),
    # Sliding-window attention (24 positions), so the long prompt reaches past the window.
    "mistral_swa": dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=False, rope_theta=10000.0, rms_norm_eps=1e-5,
        sliding_window=24),
    # Biases on the Q, K and V projections only.
    "qwen2": dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6),
}
LLAMA_CLASSES = {"mistral_swa": ("mistral", MistralConfig, MistralForCausalLM),
                 "qwen2": ("qwen2", Qwen2Config, Qwen2ForCausalLM)}


def llama_kiln_config(architecture: str, hf: dict) -> dict:
    scaling = hf.get("rope_scaling") or {}
    return {
        "architecture": architecture,
        "n_vocab": hf["vocab_size"],
        "dim": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": hf["num_attention_heads"],
        "n_kv_heads": hf["num_key_value_heads"],
        "head_dim": hf["head_dim"],
        "ffn_dim": hf["intermediate_size"],
        "n_ctx_train": 512,
        "norm": "rms",
        "norm_eps": hf["rms_norm_eps"],
        "position": "rotary",
        "rotary_style": "half",
        "rotary_dim": hf["head_dim"],
        "rope_theta": hf["rope_theta"],
        "rope_scale": scaling.get("factor", 1.0),
        "mlp": "silu_gated",
        "tied_embeddings": hf["tie_word_embeddings"],
        "attention_bias": architecture == "qwen2",
        "sliding_window": hf.get("sliding_window", 0),
    }


COMMON = {"n_ctx_train": 512, "norm": "layer", "norm_eps": 1e-5, "attention_bias": True, "mlp_bias": True}

# name: (model class, config, kiln config). Each exercises features Llama lacks.
OTHER_MODELS = {
    # LayerNorm with biases, learned positions, GELU (tanh) MLP, fused QKV with biases, tied embeddings.
    "gpt2": (GPT2LMHeadModel,
             GPT2Config(vocab_size=256, n_positions=512, n_embd=64, n_layer=2, n_head=4, n_inner=128,
                        initializer_range=0.1, bos_token_id=1, eos_token_id=2),
             dict(COMMON, architecture="gpt2", n_vocab=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=4,
                  head_dim=16, ffn_dim=128, position="learned", mlp="gelu_tanh", tied_embeddings=True)),
    # Parallel residual with two norms, partial rotary (rotate-half on 8 of 16 dims), exact GELU, untied.
    "gptneox": (GPTNeoXForCausalLM,
                GPTNeoXConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128, max_position_embeddings=512, initializer_range=0.1,
                              use_parallel_residual=True, tie_word_embeddings=False,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                               "partial_rotary_factor": 0.5}),
                dict(COMMON, architecture="gptneox", n_vocab=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=4,
                     head_dim=16, ffn_dim=128, position="rotary", rotary_style="half", rotary_dim=8,
                     rope_theta=10000.0, mlp="gelu", parallel_residual=True, tied_embeddings=False)),
    # Parallel residual with one shared norm, partial rotary over every-two pairs, no attention biases,
    # an LM head with a bias.
    "gptj": (GPTJForCausalLM,
             GPTJConfig(vocab_size=256, n_positions=512, n_embd=64, n_layer=2, n_head=4, n_inner=128, rotary_dim=8,
                        initializer_range=0.1, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
             dict(COMMON, architecture="gptj", n_vocab=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=4,
                  head_dim=16, ffn_dim=128, position="rotary", rotary_style="every_two", rotary_dim=8,
                  rope_theta=10000.0, mlp="gelu_tanh", parallel_residual=True, shared_layer_norm=True,
                  attention_bias=False, tied_embeddings=False)),
    # ALiBi with 6 heads (not a power of two), LayerNorm on the embeddings, tied embeddings.
    "bloom": (BloomForCausalLM,
              BloomConfig(vocab_size=256, hidden_size=96, n_layer=2, n_head=6, initializer_range=0.1),
              dict(COMMON, architecture="bloom", n_vocab=256, dim=96, n_layers=2, n_heads=6, n_kv_heads=6,
                   head_dim=16, ffn_dim=384, position="alibi", mlp="gelu_tanh", tied_embeddings=True)),
}


OPT_COMMON = dict(COMMON, architecture="opt", n_vocab=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
                  ffn_dim=128, position="learned", position_offset=2, mlp="relu", tied_embeddings=True)

# name: (model class, config, kiln config, seed). Seeds are fixed per model so one can be rebuilt alone.
NEW_MODELS = {
    # LayerNorm before each block, ReLU, learned positions offset by 2, tied embeddings.
    "opt": (OPTForCausalLM,
            OPTConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                      max_position_embeddings=512, init_std=0.1, do_layer_norm_before=True),
            dict(OPT_COMMON), 20),
    # As opt-350m: LayerNorm after each block (so no final norm), and a narrower (48) embedding projected
    # in and out.
    "opt_post_ln": (OPTForCausalLM,
                    OPTConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                              max_position_embeddings=512, init_std=0.1, do_layer_norm_before=False,
                              word_embed_proj_dim=48),
                    dict(OPT_COMMON, post_norm=True, final_norm=False, embedding_dim=48), 21),
    # Bidirectional, LayerNorm after each block and on the embeddings, exact GELU, token types, no LM head.
    "bert": (BertModel,
             BertConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=512, type_vocab_size=2, initializer_range=0.1,
                        hidden_act="gelu", layer_norm_eps=1e-12),
             dict(COMMON, architecture="bert", n_vocab=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
                  ffn_dim=128, norm_eps=1e-12, position="learned", mlp="gelu", n_token_types=2, post_norm=True,
                  final_norm=False, lm_head=False, causal=False, pooling="mean", pooling_normalize=True), 22),
}


def randomize(model: torch.nn.Module) -> None:
    """Moves norm weights away from 1 and biases away from 0, so a stage that ignores them shows."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_norm = "norm" in name.lower() or "ln_" in name
            if param.dim() == 1 and is_norm and name.endswith("weight"):
                param.add_(0.2 * torch.randn_like(param))
            elif param.dim() == 1 and name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))


def save(name: str, model: torch.nn.Module, kiln: dict, seed: int, dtype=torch.float32) -> None:
    out = DATA / f"tiny_{name}"
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    (out / "kiln_config.json").write_text(json.dumps(kiln, indent=2) + "\n")

    model = model.double()
    rng = np.random.default_rng(seed)
    reference = {}
    for i, length in enumerate(PROMPT_LENGTHS):
        tokens = rng.integers(0, kiln["n_vocab"], size=length, dtype=np.int64)
        if not kiln.get("lm_head", True):
            with torch.no_grad():
                hidden = model(torch.from_numpy(tokens)[None]).last_hidden_state[0].numpy()  # [n, dim] f64
            reference[f"prompt{i}.tokens"] = tokens.astype(np.int32)
            reference[f"prompt{i}.hidden"] = hidden.astype(np.float32)
            continue
        with torch.no_grad():
            logits = model(torch.from_numpy(tokens)[None]).logits[0].numpy()  # [n, n_vocab] f64
        kept = sorted({p for p in KEPT_POSITIONS if p < length} | set(range(max(0, length - LAST_KEPT), length)))
        reference[f"prompt{i}.tokens"] = tokens.astype(np.int32)
        reference[f"prompt{i}.positions"] = np.array(kept, dtype=np.int32)
        reference[f"prompt{i}.logits"] = logits[kept].astype(np.float32)
        reference[f"prompt{i}.max"] = logits.max(axis=1).astype(np.float32)
        reference[f"prompt{i}.argmax"] = logits.argmax(axis=1).astype(np.int32)
        row_max = logits.max(axis=1, keepdims=True)
        lse = row_max[:, 0] + np.log(np.exp(logits - row_max).sum(axis=1))
        reference[f"prompt{i}.logsumexp"] = lse.astype(np.float32)
    save_file(reference, str(out / "reference.safetensors"))
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out}: {total} bytes")


def build_llama(name: str, hf: dict, seed: int) -> None:
    torch.manual_seed(seed)
    # A wider init than the default 0.02 so logits spread over several units and a wrong stage shows.
    architecture, config_class, model_class = LLAMA_CLASSES.get(name, ("llama", LlamaConfig, LlamaForCausalLM))
    extra = {} if architecture != "llama" else {"attention_bias": False, "mlp_bias": False}
    config = config_class(max_position_embeddings=512, initializer_range=0.1, bos_token_id=1, eos_token_id=2,
                          **extra, **hf)
    model = model_class(config).eval()
    randomize(model)
    save(name, model, llama_kiln_config(architecture, hf), seed)


def build_other(name: str, cls, config, kiln: dict, seed: int) -> None:
    torch.manual_seed(seed)
    model = cls(config).eval()
    randomize(model)
    if name == "gptj":  # the LM head's bias starts at zero
        with torch.no_grad():
            model.lm_head.bias.copy_(0.1 * torch.randn_like(model.lm_head.bias))
    save(name, model, kiln, seed, torch.float16 if name == "bloom" else torch.float32)


def build_new(name: str) -> None:
    cls, config, kiln, seed = NEW_MODELS[name]
    torch.manual_seed(seed)
    model = cls(config).eval()
    randomize(model)
    save(name, model, kiln, seed)


def main(names: list) -> None:
    seed = 1
    for name, hf in LLAMA_MODELS.items():
        if not names or name in names:
            build_llama(name, hf, seed)
        seed += 1
    for name, (cls, config, kiln) in OTHER_MODELS.items():
        if not names or name in names:
            build_other(name, cls, config, kiln, seed)
        seed += 1
    for name in NEW_MODELS:
        if not names or name in names:
            build_new(name)


if __name__ == "__main__":
    main(sys.argv[1:])
