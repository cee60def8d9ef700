"""The tokenizer test corpus: one place that both fixture scripts read. Each entry is (name, bytes)."""
import random

PROSE = (
    "The quick brown fox jumps over the lazy dog. It's a sentence that's been used since the 1880s "
    "to test typewriters; they'd type it, and we'll keep doing so. I'm sure you've seen it.\n"
    "DON'T SHOUT: THEY'RE LISTENING. She said: \"Well... that's odd!\" (Really?) -- yes; 100% true.\n"
    "Mr. O'Neil's cat, the one that'd sleep all day, wasn't impressed. Y'all 'd better 'LL go.\n\n"
    "Unicode letters: naïve café, façade, coöperate, Straße, İstanbul, ǅemal, ﬁne ﬂow, Ωmega, ǈ."
)

CODE = (
    "#include <stdio.h>\n\nint main(void) {\n\tint x = 42;\t\t// answer\n"
    "\tfor (int i = 0; i < 10; ++i) {\n\t\tprintf(\"%d\\n\", i * x);\n\t}\n    return 0;\n}\n"
    "def f(a, b=None, *args, **kw):\n    if a  >=  b:        # many    spaces\n"
    "        return {'k': [1, 2, 3], \"v\": (a or b)}\n    else:\r\n        pass\r\n\n\n\n"
    "        \n  \t  \n" "x = [i**2 for i in range(100) if i % 3 == 0]  \n"
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%smith%';\n"
    "fn main() -> Result<(), Box<dyn Error>> { let v: Vec<u8> = vec![0xFF; 16]; Ok(()) }\n"
    "    \t\t    "
)

NUMBERS = (
    "0 1 12 123 1234 12345 123456 1234567890 3.14159 -2.5e-10 1,000,000 1.000.000,50 "
    "0x1F 0b1010 0o777 2024-01-31T23:59:59Z 555-1234 +1 (800) 123-4567 $19.99 €5 ¥100 "
    "½ ¾ ² ³ ¹ ⅔ Ⅻ ⅻ ① ⑳ ٠١٢٣٤٥٦٧٨٩ ۱۲۳ १२३ ๑๒๓ 一二三 壹贰叁 ４５６ 𝟏𝟐𝟑 🄁 10th 1st 2nd"
)

CJK = (
    "人工智能是计算机科学的一个分支，它企图了解智能的实质。北京欢迎你！"
    "日本語のテキストです。ひらがな、カタカナ、漢字が混ざっています。ｶﾀｶﾅ半角。"
    "한국어 텍스트입니다. 안녕하세요, 세계! 訓民正音 "
    "繁體中文：臺灣的電腦。「引號」『雙引號』《書名》【括號】 〜〜 "
    "𠀀𠀁𪜀 (extension B) 〇 々 ー"
)

EMOJI = (
    "Hello 👋 world 🌍! Family: 👨‍👩‍👧‍👦 couple: 👩‍❤️‍👨 flags: 🇺🇸🇯🇵🇩🇪 🏳️‍🌈 🏴‍☠️ "
    "skin tones: 👍🏻👍🏼👍🏽👍🏾👍🏿 keycaps: 1️⃣ #️⃣ *️⃣ hearts: ❤️ 💔 ♥ text vs emoji: ☺︎ ☺️ "
    "🧑🏽‍💻 🏃‍♀️‍➡️ 🫠🫶🪿 ©️ ®️ ™️ 🏴󠁧󠁢󠁳󠁣󠁴󠁿"
)

RTL = (
    "العربية: مرحبا بالعالم! هذا نصّ تجريبيّ مع تشكيل: بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ. "
    "عدد ١٢٣ و 456. עברית: שָׁלוֹם עוֹלָם! זהו טקסט לבדיקה עם ניקוד. "
    "Mixed: The word \u202bשלום\u202c means peace; \u200fמימין לשמאל\u200e and back."
)

COMBINING = (
    "e\u0301 a\u0308 o\u0302\u0323 n\u0303 Z\u0351\u0334\u033b\u0355a\u0337\u0323l\u0335\u0316g\u0336o\u0338 "
    "decomposed: Cafe\u0301 vs composed: Café. Hangul jamo: \u1112\u1161\u11ab\u1100\u1173\u11af "
    "Devanagari: नमस्ते दुनिया, क्षत्रिय. Thai: สวัสดีชาวโลก ภาษาไทย. "
    "Vietnamese: Tiếng Việt có dấu. Tamil: தமிழ். Ethiopic: ሰላም. Tibetan: བོད་ཡིག "
    "variation selectors: 葛\U000E0100 zero width: a\u200bb\u200cc\u200dd\u2060e\ufeff"
)

# Invalid UTF-8: lone continuation, overlong forms, surrogates, truncated sequences, bytes past U+10FFFF.
INVALID = (
    b"ok \xff\xfe bad \x80 cont \xc0\x80 overlong \xe0\x80\xaf \xf0\x82\x82\xac surrogate \xed\xa0\x80 "
    b"\xed\xbf\xbf truncated \xe2\x82 end \xf0\x9f\x98 \xf4\x90\x80\x80 past \xc3 \xe4\xb8\xad\xe6 fin \xc3\xa9\xc3"
)

SPECIALS = (
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi <|im_end|><|endoftext|>"
    "<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nQ? [/INST] A </s><s> x</s><unk> <|im_start <|im_end|x "
    "<|im_start|><|im_start|>assistant\n<repo_name>r<file_sep>f<|begin_of_text|><|eot_id|>"
    "< s> <S> <|IM_START|> <<|im_end|>> <|im_start|>"
)

WHITESPACE = (
    "   leading and trailing   \n\n\n\t\t\ttabs\t \t\r\n\r\n\r  x  \u3000\u00a0\u2003y\u2028z\u2029 "
    "\x0b\x0c\x1c\x85end \n \n  \n   \n"
)

CONTRACTIONS = "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'Ve 'M 'LL 'D 'ſ x's X'S it'sn't ''s '''d ' s 'x"

REPEATS = "a" * 300 + " " + "ab" * 150 + " " + "." * 200 + " " + "0" * 100 + " " + "😀" * 50 + " " * 64


def random_unicode(seed=20240611, n_bytes=100_000):
    """Random scalar values (no U+0000, no surrogates), weighted toward scripts that tokenizers meet."""
    rng = random.Random(seed)
    ranges = [
        (0x20, 0x7E, 30), (0x09, 0x0D, 4), (0xA0, 0x24F, 8), (0x370, 0x52F, 5), (0x590, 0x6FF, 5),
        (0x900, 0x0DFF, 5), (0x0E00, 0x0EFF, 3), (0x1100, 0x11FF, 2), (0x2000, 0x206F, 4),
        (0x2070, 0x2BFF, 4), (0x3000, 0x30FF, 5), (0x4E00, 0x9FFF, 10), (0xAC00, 0xD7A3, 5),
        (0xE000, 0xF8FF, 1), (0xF900, 0xFFFD, 3), (0x1F300, 0x1FAFF, 8), (0x10000, 0x10FFFF, 4),
        (0x01, 0x7F, 2), (0x300, 0x36F, 3),
    ]
    total = sum(w for _, _, w in ranges)
    out, size = [], 0
    while size < n_bytes:
        pick = rng.randrange(total)
        for lo, hi, w in ranges:
            if pick < w:
                break
            pick -= w
        cp = rng.randint(lo, hi)
        if 0xD800 <= cp <= 0xDFFF or cp == 0:
            continue
        ch = chr(cp)
        out.append(ch)
        size += len(ch.encode("utf-8"))
    return "".join(out)


def corpus():
    """[(name, bytes)] in a fixed order."""
    entries = [
        ("prose", PROSE), ("code", CODE), ("numbers", NUMBERS), ("cjk", CJK), ("emoji", EMOJI),
        ("rtl", RTL), ("combining", COMBINING), ("invalid_utf8", INVALID), ("empty", ""),
        ("specials", SPECIALS), ("whitespace", WHITESPACE), ("contractions", CONTRACTIONS),
        ("repeats", REPEATS), ("single_space", " "), ("single_newline", "\n"),
    ]
    return [(n, t if isinstance(t, bytes) else t.encode("utf-8")) for n, t in entries]
