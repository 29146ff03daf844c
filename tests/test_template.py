"""Chat formats: the GGUF's own template, else the family's turn format, else ChatML."""

from __future__ import annotations

from types import SimpleNamespace

from kvcpu.template import ChatFormat

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye."}]


class _Engine:
    def __init__(self, template, arch):
        self.chat_template = template
        self.info = SimpleNamespace(arch=arch)

    def special_text(self, which):
        return {"bos": "<s>", "eos": "</s>"}[which]


def test_a_gemma_file_without_a_template_speaks_in_gemma_turns():
    text = ChatFormat.of(_Engine(None, "gemma3")).render(MESSAGES, generation_prompt=True)
    assert text == ("<start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>user\nHi.<end_of_turn>\n"
                    "<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye.<end_of_turn>\n"
                    "<start_of_turn>model\n")


def test_other_files_without_a_template_get_chatml_and_a_template_wins():
    text = ChatFormat.of(_Engine(None, "llama")).render(MESSAGES[1:2], generation_prompt=True)
    assert text == "<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n"
    own = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    assert ChatFormat.of(_Engine(own, "gemma3")).render(MESSAGES[1:2], generation_prompt=False) == "[user] Hi. "
