"""Reference renderings of chat templates by transformers' apply_chat_template, for the
server's template renderer (crates/ia-serve/src/chat.rs tests).

Needs only `pip install transformers jinja2` (no torch). Writes
fixtures/chat-templates/cases.json: each case is a template (the shape of a well-known
model's), the special tokens, the messages, and what transformers renders with
add_generation_prompt=True, or the error text its raise_exception gives.

usage: python scripts/make_chat_fixtures.py
"""
import json
from pathlib import Path

import transformers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "chat-templates" / "cases.json"

TEMPLATES = {
    # Qwen2-Instruct (ChatML) with its default system message.
    "chatml": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    # LLaMA-2-chat: system folded into the first user turn, roles must alternate.
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    # LLaMA-3-Instruct: headers, | trim, bos_token on the first message.
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    # Zephyr: block tags on their own lines (trim_blocks / lstrip_blocks matter).
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    # tojson (Python's json.dumps, non-ASCII kept), namespace, filters, whitespace control.
    "tojson": "{%- set ns = namespace(n=0) -%}{%- for m in messages -%}{%- set ns.n = ns.n + 1 -%}{{ m.role | upper }}: {{ m.content | tojson }} {{ m | tojson }}\n{%- endfor -%}{{ 'count=' ~ ns.n }}{{ {'k': [1, 2.5, none, true]} | tojson }}{{ messages[0] | tojson(indent=2) }}",
}

CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hi there"}],
    "system": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  What is 2+2?  "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "unicode": [{"role": "user", "content": "a <b> & 'c' \"d\" é 漢字 \\ \n tab\t"}],
    "not_alternating": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ],
}

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def main():
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(ROOT / "fixtures" / "qwen2-tiny" / "tokenizer.json"), **SPECIAL
    )
    cases = []
    for name, template in TEMPLATES.items():
        for conv_name, messages in CONVERSATIONS.items():
            case = {"name": f"{name}/{conv_name}", "template": template,
                    "tokenizer_config": SPECIAL, "messages": messages}
            try:
                case["expected"] = tok.apply_chat_template(
                    messages, chat_template=template, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # the template's own raise_exception
                case["expected_error"] = str(e)
            cases.append(case)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"transformers": transformers.__version__, "cases": cases},
                              indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(cases)} cases (transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
