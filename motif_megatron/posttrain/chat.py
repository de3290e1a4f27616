"""Chat examples -> token ids with a loss mask on the assistant tokens only.

The tokenizer's own ``chat_template`` (``tokenizer_config.json``) renders the conversation; when
it has none, :data:`LLAMA3_TEMPLATE` (Llama-3's header format) is used if the tokenizer knows its
special tokens, else :data:`PLAIN_TEMPLATE`. The rendering is cut at every turn boundary and each
piece is tokenised alone, so a merge across the prompt/answer boundary can never move a token
between the masked and the trained side (an expanded Korean vocabulary makes such merges likely).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from motif_megatron.errors import UserError

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}### {{ m['role'] | capitalize }}:\n{{ m['content'] | trim }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)
ROLES = ("system", "user", "assistant")
T = TypeVar("T")


def read_records(path: str, convert: Callable[[dict], T]) -> tuple[list[T], list[dict]]:
    """``convert`` each JSONL record; a record it rejects with ``ValueError`` (or bad JSON) goes
    to the returned rejects with its line number and reason, never silently into training."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    kept, rejects = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            kept.append(convert(json.loads(line)))
        except json.JSONDecodeError:
            rejects.append({"file": path, "line": number, "reason": "not JSON"})
        except ValueError as exc:
            rejects.append({"file": path, "line": number, "reason": str(exc)})
    return kept, rejects


@dataclass
class Example:
    ids: list[int]
    loss_mask: list[int]
    """1 on assistant tokens (the answer and its end-of-turn token), 0 elsewhere."""


class ChatEncoder:
    def __init__(self, tokenizer_dir: str | Path, template: str | None = None) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        own = getattr(self.tokenizer, "chat_template", None)
        if template is None and not own:
            known = self.tokenizer.convert_tokens_to_ids(["<|start_header_id|>", "<|eot_id|>"])
            unk = self.tokenizer.unk_token_id
            template = LLAMA3_TEMPLATE if None not in known and unk not in known else PLAIN_TEMPLATE
        self.template = template or own

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, record: dict) -> Example:
        """A ``messages`` or ``prompt``/``completion`` record; raises ``ValueError`` with the reason
        for a record that cannot train."""
        messages = to_messages(record)
        ids, mask, done = [], [], ""
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:k], generation_prompt=True)
            full = self.render(messages[: k + 1], generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise UserError("the chat template does not render turn by turn (prefixes change)")
            for text, trained in ((prompt[len(done) :], 0), (full[len(prompt) :], 1)):
                piece = self._tokens(text)
                ids += piece
                mask += [trained] * len(piece)
            done = full
        if not any(mask):
            raise ValueError("no assistant tokens")
        return Example(ids, mask)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation up to the assistant's turn (for generation)."""
        return self._tokens(self.render(messages, generation_prompt=True))


def to_messages(record: dict) -> list[dict]:
    """Normalise a record to a message list, or raise ``ValueError`` naming what is wrong."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' is not a non-empty list")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise ValueError(f"a message has no role among {ROLES}")
            if not isinstance(m.get("content"), str):
                raise ValueError("a message has no text 'content'")
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise ValueError("no non-empty assistant message")
        return messages
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError("needs 'messages' or text 'prompt' and 'completion'")
    if not completion.strip():
        raise ValueError("empty completion")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
