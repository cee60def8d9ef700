#!/usr/bin/env python3
"""Records what the reference WordPiece tokenizer (the `tokenizers` package: BertNormalizer,
BertPreTokenizer, WordPiece with "##" continuations and [UNK], the [CLS] $A [SEP] template) produces on
the test corpus, as committed fixtures:

  tests/data/tok_wordpiece_vocab.txt       a cased WordPiece vocabulary trained here (4000 pieces, with
                                           the five BERT special tokens first)
  tests/data/tok_wordpiece_expected.json   for each of the four BERT text rules (lower-casing on or off,
                                           accent stripping on or off): the ids of every corpus text and of
                                           the WordPiece extras below, and the count and FNV-1a hash of the
                                           ids of the 100 KB random text

The vocabulary is trained on tests/data/tok_spm_train.txt without the random text, so characters the
random text meets only there become [UNK].

Usage: python3 tests/tokenizer/gen_wordpiece_fixtures.py [--retrain]    (needs the tokenizers package)
"""
import json
import os
import sys

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_tok_fixtures import fnv1a64, text_of  # noqa: E402
from tok_corpus import corpus  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")
VOCAB = os.path.join(DATA, "tok_wordpiece_vocab.txt")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Texts for what WordPiece adds to the corpus: specials inline, the 100-character word limit, the
# characters whose lower case or decomposition is unusual, the clean-up, CJK spacing and punctuation.
EXTRAS = {
    "bert_specials": "[CLS] already has [SEP] specials, [MASK] and [UNK] inline; [cls] is not one",
    "word_limit": "b" * 100 + " " + "b" * 101 + " " + "é" * 100 + " " + "x" * 150 + "y",
    "case_and_accents": "İstanbul ǅemal ﬁne Straße ΣΑΣ ὈΔΥΣΣΕΎΣ Ωmega naïve RÉSUMÉ Ǆ ǈ ß ẞ K Å",
    "decomposed": "une\u0301 cafe\u0301 n\u0303 a\u0308\u0304 \u0301lead mark \u1100\u1161\u11a8 한국어 안녕하세요",
    "cleanup": "control\x00chars\x07here \u200bzero\u200dwidth \ufffd replaced \u0085nel \u00a0nbsp \u3000wide "
               "\u2028line\u2029para soft\u00adhyphen \U000e0041tag private\ue000use",
    "cjk_spacing": "CJK 豈 﨑 compat, 𠀀 ext-B, 日本語テキスト and 한국어 mixed中文text",
    "punctuation": "punct!!! ¿Qué? «quotes» — dash… ellipsis ¡hola! $5 ^_^ `tick` ~tilde~ 1+1=2 a@b.c",
    "line_breaks": "tab\there\nnew line\r\nwindows\x0bvt\x0cff  double  spaces   ",
}
RULES = [(True, True), (True, False), (False, False), (False, True)]  # (lowercase, strip_accents)


def training_texts():
    with open(os.path.join(DATA, "tok_spm_train.txt"), encoding="utf-8") as f:
        yield f.read()
    for _, raw in corpus():
        yield text_of(raw)
    yield from EXTRAS.values()


def train():
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=4000, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    assert [p for p, _ in vocab[:5]] == SPECIALS
    with open(VOCAB, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(piece + "\n" for piece, _ in vocab)


def reference(lowercase, strip_accents):
    with open(VOCAB, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def main():
    if "--retrain" in sys.argv or not os.path.exists(VOCAB):
        train()
    with open(os.path.join(DATA, "tok_random_unicode.txt"), encoding="utf-8", newline="") as f:
        random_text = f.read()
    out = {"extras": EXTRAS, "rules": []}
    for lowercase, strip_accents in RULES:
        tok = reference(lowercase, strip_accents)
        ids = {name: tok.encode(text_of(raw)).ids for name, raw in corpus()}
        ids.update({name: tok.encode(text).ids for name, text in EXTRAS.items()})
        random_ids = tok.encode(random_text).ids
        out["rules"].append({"lowercase": lowercase, "strip_accents": strip_accents, "ids": ids,
                             "random": {"count": len(random_ids), "fnv1a64": fnv1a64(random_ids)}})
    path = os.path.join(DATA, "tok_wordpiece_expected.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes), {VOCAB} ({os.path.getsize(VOCAB)} bytes)")


if __name__ == "__main__":
    main()
