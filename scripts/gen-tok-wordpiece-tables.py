#!/usr/bin/env python3
"""Writes tokenizer/wordpiece_tables.inc: the per-character facts the BERT text rules need, taken from the
`tokenizers` package itself (its BertNormalizer and BertPreTokenizer, one code point at a time), so kiln
follows the reference's own Unicode tables rather than some other version of them:

  ranges {first, last, flags}: kWpRemove (clean-up drops it: controls, format, unassigned, U+FFFD),
      kWpSpace (clean-up turns it into a space), kWpPunct (split off as its own word), kWpCjk (a CJK
      ideograph: spaced apart), kWpMark (a nonspacing mark: dropped when stripping accents)
  kWpStrip {cp, "..."}: the canonical decomposition without nonspacing marks, where it differs (Hangul
      syllables are left out: kiln decomposes them by the Unicode algorithm)
  kWpLower {cp, "..."}: the lower-case mapping, where it differs

The rules apply character by character in this order: clean-up, CJK spacing, accent stripping,
lower-casing. --verify runs every code point through the full reference normalizer and pre-tokenizer and
compares it with those rules applied from the tables.

Usage: python3 scripts/gen-tok-wordpiece-tables.py [--verify]   (needs the tokenizers package)
"""
import os
import sys

from tokenizers import normalizers, pre_tokenizers

REMOVE, SPACE, PUNCT, CJK, MARK = 1, 2, 4, 8, 16
NAMES = {REMOVE: "kWpRemove", SPACE: "kWpSpace", PUNCT: "kWpPunct", CJK: "kWpCjk", MARK: "kWpMark"}
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3


def code_points():
    return [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]


def bert(clean=False, cjk=False, strip=False, lower=False):
    return normalizers.BertNormalizer(clean_text=clean, handle_chinese_chars=cjk, strip_accents=strip,
                                      lowercase=lower)


def facts():
    clean, cjk, strip, lower = bert(clean=True), bert(cjk=True), bert(strip=True), bert(lower=True)
    split = pre_tokenizers.BertPreTokenizer()
    flags, strip_map, lower_map = {}, {}, {}
    for cp in code_points():
        c = chr(cp)
        f = 0
        cleaned = clean.normalize_str(c)
        if cleaned == "":
            f |= REMOVE
        elif cleaned == " ":
            f |= SPACE
        if cjk.normalize_str(c) != c:
            f |= CJK
        if c not in " \t\n\r" and len(split.pre_tokenize_str("a" + c + "a")) == 3:
            f |= PUNCT
        stripped = strip.normalize_str(c)
        if stripped == "":
            f |= MARK
        elif stripped != c and not HANGUL_FIRST <= cp <= HANGUL_LAST:
            strip_map[cp] = stripped
        lowered = lower.normalize_str(c)
        if lowered != c:
            lower_map[cp] = lowered
        if f:
            flags[cp] = f
    return flags, strip_map, lower_map


def ranges(flags):
    out = []
    for cp in sorted(flags):
        f = flags[cp]
        if out and out[-1][1] == cp - 1 and out[-1][2] == f:
            out[-1][1] = cp
        else:
            out.append([cp, cp, f])
    return out


def hangul_decompose(cp):
    s = cp - HANGUL_FIRST
    l, v, t = 0x1100 + s // 588, 0x1161 + (s % 588) // 28, 0x11A7 + s % 28
    return chr(l) + chr(v) + (chr(t) if t != 0x11A7 else "")


def emulate(text, flags, strip_map, lower_map, lowercase, strip_accents):
    """The rules applied from the tables: normalized text, then the words."""
    out = []
    for c in text:
        cp = ord(c)
        f = flags.get(cp, 0)
        if f & REMOVE:
            continue
        if f & SPACE:
            out.append(" ")
            continue
        pieces = [c]
        if strip_accents:
            if f & MARK:
                continue
            if HANGUL_FIRST <= cp <= HANGUL_LAST:
                pieces = list(hangul_decompose(cp))
            else:
                pieces = list(strip_map.get(cp, c))
        if lowercase:
            pieces = [lower_map.get(ord(p), p) for p in pieces]
        s = "".join(pieces)
        out.append(f" {s} " if f & CJK else s)
    words, word = [], ""
    for c in "".join(out):
        if c == " ":
            if word:
                words.append(word)
            word = ""
        elif flags.get(ord(c), 0) & PUNCT:
            if word:
                words.append(word)
            words.append(c)
            word = ""
        else:
            word += c
    if word:
        words.append(word)
    return words


def verify(flags, strip_map, lower_map):
    split = pre_tokenizers.BertPreTokenizer()
    cps = code_points()
    for lowercase, strip_accents in ((True, True), (False, False), (True, False), (False, True)):
        norm = bert(clean=True, cjk=True, strip=strip_accents, lower=lowercase)
        bad = 0
        for cp in cps:
            # Each character between two letters, so the split around it shows too.
            text = "x" + chr(cp) + "y"
            expect = [w for w, _ in split.pre_tokenize_str(norm.normalize_str(text))]
            got = emulate(text, flags, strip_map, lower_map, lowercase, strip_accents)
            if expect != got:
                bad += 1
                if bad <= 10:
                    print(f"lowercase={lowercase} strip={strip_accents} U+{cp:04X}: {expect} != {got}")
        print(f"lowercase={lowercase} strip_accents={strip_accents}: {bad} mismatches")
        if bad:
            sys.exit(1)


def c_string(s):
    return '"' + "".join(f"\\x{b:02X}" for b in s.encode("utf-8")) + '"'


def main():
    flags, strip_map, lower_map = facts()
    if "--verify" in sys.argv:
        verify(flags, strip_map, lower_map)
    import tokenizers
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "tokenizer", "wordpiece_tables.inc")
    with open(path, "w") as f:
        f.write(f"// Generated by scripts/gen-tok-wordpiece-tables.py from tokenizers {tokenizers.__version__}: "
                "do not edit.\n")
        f.write("#ifdef KILN_WORDPIECE_RANGES\n// {first, last, flags}: sorted, disjoint code point ranges.\n")
        for lo, hi, fl in ranges(flags):
            names = " | ".join(NAMES[b] for b in NAMES if fl & b)
            f.write(f"{{0x{lo:X}, 0x{hi:X}, {names}}},\n")
        f.write("#endif\n#ifdef KILN_WORDPIECE_STRIP\n// {code point, UTF-8 of its decomposition without marks}\n")
        for cp in sorted(strip_map):
            f.write(f"{{0x{cp:X}, {c_string(strip_map[cp])}}},\n")
        f.write("#endif\n#ifdef KILN_WORDPIECE_LOWER\n// {code point, UTF-8 of its lower case}\n")
        for cp in sorted(lower_map):
            f.write(f"{{0x{cp:X}, {c_string(lower_map[cp])}}},\n")
        f.write("#endif\n")
    print(f"wrote {len(ranges(flags))} ranges, {len(strip_map)} decompositions, {len(lower_map)} lower cases to {path}")


if __name__ == "__main__":
    main()
