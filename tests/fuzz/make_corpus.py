#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus, tests/fuzz/corpus/<target>/, from real small files: the committed
GGUF and safetensors fixtures, the tokenizer corpus and chat templates, and micro models (a few hundred
parameters, random weights) that transformers, tokenizers, sentencepiece and gguf write as they write real
ones, converted to .kiln by the kiln binary. The whole corpus stays well under 1 MB.

  python3 tests/fuzz/make_corpus.py BUILD_DIR/main/kiln

Needs torch, transformers, tokenizers, sentencepiece, gguf (fixture generation only; the tests read the
committed files).
"""

import io
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import gguf
import numpy as np
import sentencepiece as spm
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
SEPARATOR = b"\n=====\n"  # fuzz_hf_folder.cpp and fuzz_chat_template.cpp split their input at it
TEXT = (DATA / "declaration_of_independence.txt").read_text()
CHAT = json.loads((DATA / "chat_templates.json").read_text())
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def put(target: str, name: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def micro_bpe(path: pathlib.Path) -> Tokenizer:
    """A byte-level BPE of 320 tokens trained on the declaration, with ChatML's specials."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT], trainer)
    tok.save(str(path / "tokenizer.json"))
    template = next(t["template"] for t in CHAT["templates"] if t["name"] == "smollm2")
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False, "chat_template": template}))
    return tok


def micro_spm(path: pathlib.Path) -> spm.SentencePieceProcessor:
    """A SentencePiece BPE of 400 pieces (256 of them bytes) with byte fallback, as Llama 2 ships
    tokenizer.model."""
    spm.SentencePieceTrainer.train(input=str(DATA / "declaration_of_independence.txt"), model_prefix=str(path / "spm"),
                                   vocab_size=400, model_type="bpe", byte_fallback=True,
                                   normalization_rule_name="identity", minloglevel=2)
    shutil.move(path / "spm.model", path / "tokenizer.model")
    template = next(t["template"] for t in CHAT["templates"] if t["name"] == "llama2")
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "chat_template": template}))
    return spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))


def randomize(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)


def llama_folder(path: pathlib.Path, vocab: int) -> None:
    config = LlamaConfig(vocab_size=vocab, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=64,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    randomize(model)
    model.save_pretrained(path, safe_serialization=True)


def gpt2_folder(path: pathlib.Path, vocab: int) -> None:
    config = GPT2Config(vocab_size=vocab, n_embd=8, n_layer=1, n_head=2, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    model = GPT2LMHeadModel(config)
    randomize(model)
    model.save_pretrained(path, safe_serialization=True)


def bert_folder(path: pathlib.Path) -> None:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz.,!?")
    words += ["the", "of", "and", "to", "people", "##s", "##ed", "##ing", "##ly"]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    config = BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=64, type_vocab_size=2)
    model = BertModel(config, add_pooling_layer=False)
    randomize(model)
    model.save_pretrained(path, safe_serialization=True)


def hf_seed(path: pathlib.Path) -> bytes:
    parts = [path / name for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors")]
    return SEPARATOR.join(p.read_bytes() if p.exists() else b"" for p in parts)


def convert(kiln: str, source: pathlib.Path, out: pathlib.Path, dtype: str) -> bytes:
    subprocess.run([kiln, "convert", str(source), "-o", str(out), "--type", dtype, "--group-size", "8", "-q",
                    "--force"], check=True)
    return out.read_bytes()


def gguf_llama(path: pathlib.Path, tokenizer: dict, quant: gguf.GGMLQuantizationType) -> bytes:
    """A llama GGUF (dim 32, so Q8_0/Q4 blocks fit a row) as llama.cpp's converter lays it out."""
    rng = np.random.default_rng(7)
    n_vocab, dim, ffn, n_heads, n_kv = len(tokenizer["tokens"]), 32, 64, 4, 2
    head_dim = dim // n_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("micro")
    w.add_context_length(64)
    w.add_embedding_length(dim)
    w.add_block_count(1)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(tokenizer["model"])
    if "pre" in tokenizer:
        w.add_tokenizer_pre(tokenizer["pre"])
    w.add_token_list(tokenizer["tokens"])
    w.add_token_types(tokenizer["types"])
    if "scores" in tokenizer:
        w.add_token_scores(tokenizer["scores"])
    if "merges" in tokenizer:
        w.add_token_merges(tokenizer["merges"])
    w.add_bos_token_id(tokenizer["bos"])
    w.add_eos_token_id(tokenizer["eos"])
    w.add_chat_template(tokenizer["template"])

    def tensor(name: str, shape: tuple, quantized: bool) -> None:
        values = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if quantized and quant not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(name, gguf.quants.quantize(values, quant), raw_dtype=quant)
        elif quantized and quant == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, values.astype(np.float16))
        else:
            w.add_tensor(name, values)

    tensor("token_embd.weight", (n_vocab, dim), True)
    for name, shape in (("attn_norm.weight", (dim,)), ("attn_q.weight", (dim, dim)),
                        ("attn_k.weight", (n_kv * head_dim, dim)), ("attn_v.weight", (n_kv * head_dim, dim)),
                        ("attn_output.weight", (dim, dim)), ("ffn_norm.weight", (dim,)),
                        ("ffn_gate.weight", (ffn, dim)), ("ffn_up.weight", (ffn, dim)),
                        ("ffn_down.weight", (dim, ffn))):
        tensor("blk.0." + name, shape, len(shape) == 2)
    tensor("output_norm.weight", (dim,), False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def text_seeds() -> list:
    seeds = []
    for entry in json.loads((DATA / "tok_corpus.json").read_text()):
        data = bytes.fromhex(entry["hex"]) if "hex" in entry else entry["text"].encode()
        seeds.append((entry["name"], data[:2000]))
    seeds.append(("chatml_turn", b"<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"))
    return seeds


def main() -> None:
    kiln = sys.argv[1]
    torch.manual_seed(0)
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    # A fixed scratch path: the .kiln files record their source's path, and the seeds should come out
    # the same on every run.
    tmp = pathlib.Path(tempfile.gettempdir()) / "kiln-fuzz-corpus"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        bpe_dir, spm_dir, gpt2_dir, bert_dir = (tmp / n for n in ("llama_bpe", "llama_spm", "gpt2", "bert"))
        for d in (bpe_dir, spm_dir, gpt2_dir, bert_dir):
            d.mkdir()
        bpe = micro_bpe(bpe_dir)
        llama_folder(bpe_dir, bpe.get_vocab_size())
        sp = micro_spm(spm_dir)
        llama_folder(spm_dir, sp.get_piece_size())
        micro_bpe(gpt2_dir)
        gpt2_folder(gpt2_dir, bpe.get_vocab_size())
        bert_folder(bert_dir)

        # .kiln: every weight dtype, each tokenizer kind, a decoder without and an encoder with LayerNorm.
        for name, source, dtype in (("llama_bpe_f32", bpe_dir, "f32"), ("llama_bpe_int8", bpe_dir, "int8"),
                                    ("llama_spm_f16", spm_dir, "f16"), ("gpt2_bf16", gpt2_dir, "bf16"),
                                    ("bert_f16", bert_dir, "f16")):
            put("kiln_file", name + ".kiln", convert(kiln, source, tmp / (name + ".kiln"), dtype))

        for name, source in (("llama_bpe", bpe_dir), ("gpt2", gpt2_dir), ("bert", bert_dir)):
            put("hf_folder", name, hf_seed(source))
        put("hf_folder", "sharded", SEPARATOR.join((DATA / "hf_sharded" / n).read_bytes() for n in
                                                   ("config.json", "tokenizer.json", "tokenizer_config.json",
                                                    "model-00001-of-00002.safetensors")))

        for name in ("safetensors_small.safetensors",):
            put("safetensors", name, (DATA / name).read_bytes())
        for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
            put("safetensors", "sharded_" + name, (DATA / "hf_sharded" / name).read_bytes())
        put("safetensors", "llama_micro.safetensors", (bpe_dir / "model.safetensors").read_bytes())

        vocab = bpe.get_vocab()
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        merges = [" ".join(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
        chatml = next(t["template"] for t in CHAT["templates"] if t["name"] == "smollm2")
        bpe_tok = {"model": "gpt2", "pre": "smollm", "tokens": tokens, "merges": merges,
                   "types": [3 if t in SPECIALS else 1 for t in tokens], "bos": 1, "eos": 2, "template": chatml}
        put("gguf", "all_types.gguf", (DATA / "gguf_all_types.gguf").read_bytes())
        put("gguf", "llama_bpe_q8_0.gguf", gguf_llama(tmp / "a.gguf", bpe_tok, gguf.GGMLQuantizationType.Q8_0))
        spm_types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
                     for i in range(sp.get_piece_size())]
        spm_tok = {"model": "llama", "tokens": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
                   "scores": [sp.get_score(i) for i in range(sp.get_piece_size())], "types": spm_types,
                   "bos": sp.bos_id(), "eos": sp.eos_id(),
                   "template": next(t["template"] for t in CHAT["templates"] if t["name"] == "llama2")}
        put("gguf", "llama_spm_q4_1.gguf", gguf_llama(tmp / "b.gguf", spm_tok, gguf.GGMLQuantizationType.Q4_1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # Tokenizers: the first byte picks the split (BPE) or the flags; the tokenizer corpus is the text.
    for i, (name, text) in enumerate(text_seeds()):
        put("bpe", name, bytes([i % 5 | (0x10 if i % 2 else 0)]) + text)
        put("spm", name, bytes([i % 8]) + text)

    conversations = CHAT["conversations"]
    for t in CHAT["templates"]:
        for conv_name in ("system_multi_turn", "unicode"):
            messages = conversations[conv_name]
            turns = [m for m in messages if m["role"] != "system"]
            if len(turns) % 2:
                turns = turns[:-1]
            system = next((m["content"] for m in messages if m["role"] == "system"), "")
            session = json.dumps({"system": system, "messages": turns}, ensure_ascii=False).encode()
            put("chat_template", f"{t['name']}_{conv_name}", t["template"].encode() + SEPARATOR + session)
    put("chat_template", "lines", b"{{ '<|user|>' }}<|assistant|>" + SEPARATOR + b"user: Hi\nassistant: Hello\nuser: ?")

    # kiln batch input, each of its three kinds (with a duplicate id and a bad line among them).
    put("batch_input", "plain", b"Once upon a time\n\nThe capital of France is\r\n")
    put("batch_input", "shorthand", "\n".join(json.dumps(x, ensure_ascii=False) for x in (
        {"id": 1, "prompt": "Hello", "max_tokens": 8, "temperature": 0.5, "stop": ["\n"]},
        {"id": "b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi ünï"}],
         "seed": 3, "top_p": 0.9},
        {"id": 1, "prompt": "duplicate id"},
    )).encode() + b"\n{not json\n")
    put("batch_input", "openai", "\n".join(json.dumps(x) for x in (
        {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                  "max_completion_tokens": 16}},
        {"custom_id": "r2", "method": "POST", "url": "/v1/completions",
         "body": {"model": "m", "prompt": ["Once"], "max_tokens": None, "n": 1}},
    )).encode())

    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    print(f"wrote {sum(1 for f in CORPUS.rglob('*') if f.is_file())} seeds, {total} bytes, under {CORPUS}")


if __name__ == "__main__":
    main()
