#!/usr/bin/env python3
"""Reference data for tests/tokenizer: what Hugging Face makes of the default model's tokenizer.

Writes into --out:
  hf_tokenizer/            save_pretrained() of the tokenizer transformers builds from the GGUF
                           (tokenizer.json, tokenizer_config.json, chat_template.jinja)
  gguf_spec.json           the TokenizerSpec inputs read straight from the GGUF metadata (tokens,
                           token types, merges, special ids, pre, chat_template), so the C++ test
                           needs no GGUF reader
  tokenizer_reference.json {"cases": [{text, ids, ids_no_special, decode, decode_skip_special}],
                            "decode_cases": [{ids, decode, decode_skip_special}],
                            "chat": [{template, messages, add_generation_prompt, text}],
                            "llama3_template": ...}

Exit 0 with a message and nothing written when the model or transformers is missing (the C++
tests then skip).
Usage: tokenizer_reference.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out build/tokref
"""
import argparse
import json
import os
import random
import sys

# Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

HAND_WRITTEN = [
    "", " ", "  ", "a", "Hello world", "Hello, world!", " Hello world", "Hello world ", "hello   world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure it's what we'd've done, they'll say; you're right, I've seen it. DON'T SHOUT, It'S ok",
    "12345", "3.14159", "1,000,000", "Call 555-1234 at 10:30pm on 2024-01-15.", " 7 77 777 7777 77777",
    "x=1+2*3/4-5%6", "0x1F 0b1010 1e-9 -42", "v1.2.3-rc.4",
    "\t", "\n", "\r\n", "\n\n\n", " \n ", "a\n\nb", "a \n b", "line1\nline2\r\nline3\rline4",
    "tabs\tbetween\twords", "\t\tindented", "    four spaces", "trailing spaces    ", "   ", " \t \n \t ",
    "mixed \u00a0nbsp\u00a0here", "nel\u0085char", " \u0085 a\u0085b", "line\u2028sep\u2029para", "ideo\u3000space",
    "zero\u200bwidth", "\ufeffbom", "thin\u2009space", "\u000bvt\u000cff",
    "café naïve résumé Ünïcödé", "e\u0301 combining acute", "Straße grüßen", "Привет, мир!", "Γειά σου Κόσμε",
    "नमस्ते दुनिया", "สวัสดีชาวโลก", "안녕하세요 세계", "こんにちは世界", "你好，世界！", "中文字符测试：标点符号。",
    "مرحبا بالعالم", "שלום עולם", "Tiếng Việt có dấu", "ქართული ენა", "Հայերեն", "አማርኛ",
    "😀", "😀😃😄", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇺🇸🇬🇧🇯🇵", "👍🏽 thumbs", "1️⃣ keycap", "🧑‍💻 coder",
    "I ❤️ NY", "★☆✓✗→←↑↓", "∑∫√∞≠≤≥ ±×÷", "Ⅻ Ⅳ roman", "x² + y³ = z⁴", "１２３ fullwidth ＡＢＣ", "٣٤٥ arabic digits",
    "१२३ devanagari digits", "½ ¾ ⅓", "€100 £50 ¥1000 $5", "©®™", "«quotes» „German“ ‘single’ “double”",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}', "<div class=\"x\">Hello</div>",
    "SELECT * FROM users WHERE id = 42;", "https://example.com/path?query=1&b=2#frag", "user@example.com",
    "#include <vector>\nint main() { return 0; }", "    if x:\n        pass\n\n\n    else:\n        y()",
    "$ ls -la | grep foo && echo ok", "a\\b\\c", "'single' \"double\" `back`", "!!!???...,,,;;;",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHello<|im_end|>\n",
    "text<|im_start|>inside", "<|im_start|><|im_end|>", "<|im_start", "im_start|>", "< |im_start| >",
    "<repo_name>x<file_sep>y<filename>z", "<|endoftext|><|endoftext|>", " <|im_end|> spaced ",
    "Ġ Ċ ĉ raw byte-level chars", "ĠĠĠ", "\u0100\u0101\u0120",
    # Bytes SmolLM2's vocabulary lacks (0x04 0x06 0x13 0x14 0x16 0x1d; 0xF1/0xF2 lead bytes): dropped.
    "a\x04b\x06c\x13d\x14e\x16f\x1dg", "\U00040000 \U00080000 \U0010FFFD", "\x00nul\x7fdel\x1b[0m",
    " 1", "a 1", "a  1", "x\n1", "(1)", "x=12 y=345", "1 2  3   4", "Ⅻ Ⅳ", "½ ¾",
]


def build_corpus(seed: int = 1234):
    rng = random.Random(seed)
    corpus = list(HAND_WRITTEN)
    words = ["the", "of", "and", "token", "model", "inference", "server", "KV", "cache", "GPU", "attention",
             "don't", "it's", "naïve", "日本語", "中文", "Ελληνικά", "русский", "عربي", "😀", "👩‍🚀", "🇫🇷",
             "42", "3.5", "100000", "x_y", "foo()", "a->b", "<tag>", "&amp;", "\t", "\n", "  ", "\u00a0"]
    ranges = [(0x20, 0x7E), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF),
              (0x900, 0x97F), (0xE00, 0xE7F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
              (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF), (0x2000, 0x206F), (0x2190, 0x22FF), (0xFF00, 0xFFEF),
              (0x10000, 0x1007F), (0x1D400, 0x1D4FF)]
    for _ in range(70):  # word salad
        n = rng.randint(1, 25)
        sep = rng.choice([" ", " ", " ", "", "\n", "  ", "\t", ", "])
        corpus.append(sep.join(rng.choice(words) for _ in range(n)))
    for _ in range(60):  # random code points
        n = rng.randint(1, 40)
        s = []
        for _ in range(n):
            lo, hi = rng.choice(ranges)
            s.append(chr(rng.randint(lo, hi)))
            if rng.random() < 0.15:
                s.append(rng.choice([" ", "\n", "  ", "\u200d", "\ufe0f", "\u0301"]))
        corpus.append("".join(s))
    for _ in range(30):  # ASCII soup: punctuation, digits, whitespace runs, specials
        n = rng.randint(1, 60)
        alphabet = "abcXYZ0123456789 \t\n\r.,;:'\"!?()[]{}<>|/\\-_=+*&^%$#@~`"
        s = "".join(rng.choice(alphabet) for _ in range(n))
        if rng.random() < 0.3:
            k = rng.randint(0, len(s))
            s = s[:k] + rng.choice(["<|im_start|>", "<|im_end|>", "<|endoftext|>"]) + s[k:]
        corpus.append(s)
    # Long strings.
    corpus.append(" ".join(HAND_WRITTEN[5:40]) * 20)
    corpus.append(" " * 1000)
    corpus.append("\n" * 500 + "x")
    corpus.append("".join(str(rng.randint(0, 9)) for _ in range(2000)))
    corpus.append("😀👍🏽👨‍👩‍👧‍👦" * 200)
    corpus.append("中文测试" * 500)
    corpus.append("abc" * 3000)
    corpus.append("word " * 3000)
    return corpus


def gguf_spec(path):
    import gguf

    r = gguf.GGUFReader(path)

    def scalar(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    spec = {
        "model": scalar("tokenizer.ggml.model", "gpt2"),
        "pre": scalar("tokenizer.ggml.pre", ""),
        "tokens": scalar("tokenizer.ggml.tokens"),
        "token_types": scalar("tokenizer.ggml.token_type", []),
        "merges": scalar("tokenizer.ggml.merges", []),
        "add_bos": bool(scalar("tokenizer.ggml.add_bos_token", False)),
        "chat_template": scalar("tokenizer.chat_template", ""),
    }
    for name in ("bos", "eos", "eot", "padding", "unknown"):
        v = scalar(f"tokenizer.ggml.{name}_token_id")
        spec[f"{name}_id"] = None if v is None else int(v)
    return spec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args()
    if not os.path.exists(args.model):
        print(f"tokenizer_reference: {args.model} not found; skipping")
        return 0
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        print(f"tokenizer_reference: transformers unavailable ({e}); skipping")
        return 0

    os.makedirs(args.out, exist_ok=True)
    model_dir, model_file = os.path.split(os.path.abspath(args.model))
    spec = gguf_spec(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=model_file)
    # transformers' GGUF loader builds a plain ByteLevel pre-tokenizer whatever tokenizer.ggml.pre
    # says. SmolLM2's own tokenizer.json (HuggingFaceTB/SmolLM2-*) is Sequence[Digits(individual),
    # ByteLevel], which llama.cpp's "smollm" reproduces: restore it so the reference is the model's
    # real tokenizer. The unpatched result is kept as ids_transformers_gguf, for information.
    gguf_loader_tok = None
    if spec["pre"] in ("smollm", "starcoder"):
        from tokenizers import pre_tokenizers

        gguf_loader_tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=model_file)
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.save_pretrained(os.path.join(args.out, "hf_tokenizer"))
    with open(os.path.join(args.out, "gguf_spec.json"), "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)

    def decode(ids, skip):
        return tok.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)

    cases = []
    for text in build_corpus():
        ids = tok.encode(text, add_special_tokens=False)
        ids_ns = tok(text, add_special_tokens=False, split_special_tokens=True).input_ids
        case = {"text": text, "ids": ids, "ids_no_special": ids_ns,
                "decode": decode(ids, False), "decode_skip_special": decode(ids, True)}
        if gguf_loader_tok is not None:
            case["ids_transformers_gguf"] = gguf_loader_tok.encode(text, add_special_tokens=False)
        cases.append(case)

    # Arbitrary id sequences: partial byte tokens, specials in the middle (U+FFFD placement).
    rng = random.Random(99)
    n_vocab = len(tok)
    decode_cases = []
    for _ in range(100):
        ids = [rng.choice([rng.randrange(n_vocab), rng.randrange(0, 17), rng.randrange(17, 300)])
               for _ in range(rng.randint(1, 12))]
        decode_cases.append({"ids": ids, "decode": decode(ids, False), "decode_skip_special": decode(ids, True)})

    conversations = [
        [{"role": "user", "content": "Hello!"}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "  And 3+3?  \n"}],
        [{"role": "system", "content": "  padded system \n\n"}, {"role": "user", "content": "\tx\u3000"},
         {"role": "assistant", "content": "日本語 😀"}, {"role": "user", "content": "<|im_end|> inside"}],
        [{"role": "assistant", "content": "I start."}],
        [{"role": "user", "content": ""}],
    ]
    chat = []
    for msgs in conversations:
        for agp in (True, False):
            chat.append({"template": "model", "messages": msgs, "add_generation_prompt": agp,
                         "text": tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)})
            chat.append({"template": "llama3", "messages": msgs, "add_generation_prompt": agp,
                         "text": tok.apply_chat_template(msgs, chat_template=LLAMA3_TEMPLATE, tokenize=False,
                                                         add_generation_prompt=agp, bos_token="<|begin_of_text|>")})

    ref = {"model": os.path.basename(args.model), "cases": cases, "decode_cases": decode_cases, "chat": chat,
           "llama3_template": LLAMA3_TEMPLATE}
    with open(os.path.join(args.out, "tokenizer_reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False)
    differ = sum(1 for c in cases if "ids_transformers_gguf" in c and c["ids_transformers_gguf"] != c["ids"])
    print(f"tokenizer_reference: {len(cases)} strings, {len(decode_cases)} id sequences, "
          f"{len(chat)} chat renderings -> {args.out}"
          + (f"; transformers' GGUF loader (no Digits step) differs on {differ} strings" if gguf_loader_tok else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
