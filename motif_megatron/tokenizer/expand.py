"""EEVE-style vocabulary expansion of a byte-level BPE tokenizer (Llama-3's ``tokenizer.json``).

Candidates are the new tokenizer's tokens missing from the base vocabulary. Rule filters drop
numbers, whitespace/punctuation, pieces of a character, tokens not in the target script (which
could change English tokenisation), mixed-script tokens, a user stop-list, and likely named
entities (frequent but concentrated in very few documents). A frequency count over the corpus,
encoded with the new tokenizer, decides the rest (``min_count``). Each kept token enters the base
with a chain of merges over the pieces the base tokenizer already gives it, at ids after the last
existing id, so: every old id keeps its meaning, special ids do not move, merges
only ever combine target-script bytes (English tokenises exactly as before), and byte-level BPE
keeps ``decode(encode(x)) == x``.
"""

from __future__ import annotations

import itertools
import json
import shutil
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from motif_megatron.errors import UserError

SCRIPTS = {
    "hangul": lambda ch: (
        0xAC00 <= ord(ch) <= 0xD7A3 or 0x1100 <= ord(ch) <= 0x11FF or 0x3130 <= ord(ch) <= 0x318F
    ),
}


@dataclass
class ExpansionConfig:
    min_count: int = 25_000
    """Keep candidates produced at least this often on the corpus (EEVE: 25k on ~1B tokens)."""
    max_new_tokens: int | None = None
    script: str = "hangul"
    min_doc_freq: int = 3
    """Named-entity heuristic: a token seen in fewer documents than this is topic-bound."""
    stop_list: set[str] = field(default_factory=set)


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level alphabet: printable stand-ins for the 256 bytes."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


_BYTES = _byte_decoder()


def token_text(token: str) -> str | None:
    """The text a byte-level token stands for, or None if it is part of a UTF-8 character."""
    try:
        return bytes(_BYTES[ch] for ch in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None


def rule_reason(token: str, config: ExpansionConfig) -> str | None:
    """Why a candidate is excluded by rule, or None."""
    text = token_text(token)
    if text is None:
        return "partial_character"
    stripped = text.strip()
    if not stripped or all(unicodedata.category(c)[0] in "PSZC" for c in stripped):
        return "whitespace_or_punctuation"
    if any(c.isdigit() for c in text):
        return "number"
    in_script = SCRIPTS[config.script]
    letters = [c for c in stripped if c.isalpha()]
    if not any(map(in_script, letters)):
        return "not_target_script"
    if any(not in_script(c) for c in letters) or any(
        unicodedata.category(c)[0] in "PS" for c in stripped
    ):
        return "mixed_script"
    if stripped in config.stop_list or text in config.stop_list:
        return "stop_list"
    return None


SKIP = "skip"  # a candidate the base already has: neither kept nor counted as excluded


def _select(
    tokens: list[str],
    new_vocab: dict[str, int],
    counts: Counter,
    doc_freq: Counter,
    config: ExpansionConfig,
    extra_rule=None,
) -> tuple[list[str], Counter]:
    """Candidates in frequency order through the rules, ``min_count`` and the named-entity
    heuristic; returns the kept tokens and how many each reason excluded."""
    excluded: Counter = Counter()
    kept: list[str] = []
    for token in sorted(tokens, key=lambda t: (-counts[new_vocab[t]], new_vocab[t])):
        tid = new_vocab[token]
        reason = rule_reason(token, config) or (extra_rule(token) if extra_rule else None)
        if reason == SKIP:
            continue
        if reason is None and counts[tid] < config.min_count:
            reason = "below_min_count"
        if reason is None and doc_freq[tid] < config.min_doc_freq:
            reason = "named_entity_like"
        if reason:
            excluded[reason] += 1
            continue
        kept.append(token)
        if config.max_new_tokens and len(kept) >= config.max_new_tokens:
            break
    return kept, excluded


def count_tokens(new_tokenizer, texts: Iterable[str]) -> tuple[Counter, Counter]:
    """(occurrences, documents containing) per token id under the new tokenizer; ``texts`` is
    streamed 1,000 documents at a time."""
    counts, docs = Counter(), Counter()
    it = iter(texts)
    while batch := list(islice(it, 1000)):
        for enc in new_tokenizer.encode_batch(batch, add_special_tokens=False):
            counts.update(enc.ids)
            docs.update(set(enc.ids))
    return counts, docs


_TO_BYTE_LEVEL = {b: ch for ch, b in _BYTES.items()}


def byte_level(text: str) -> str:
    """The byte-level token spelling ``text`` (the inverse of :func:`token_text`)."""
    return "".join(_TO_BYTE_LEVEL[b] for b in text.encode("utf-8"))


def _chain_merges(
    kept: list[str],
    parts_of: Callable[[str], list[str]],
    add: Callable[[str, str, str], int | None],
    text_of: Callable[[str], str | None],
    pieces_of: Callable[[str, str, str], list[int]],
    counted: Callable[[str, Counter], int],
    counts: Counter,
    doc_freq: Counter,
) -> list[dict]:
    """The merge chain that builds each kept token over the base's own pieces for it
    ((p1, p2) -> p1p2, (p1p2, p3) -> ...): ``add(left, right, merged)`` enters a merge the base
    lacks and returns the new id (None: the base has it already). Chain prefixes become
    (intermediate) tokens of their own; one record per token entered, in order."""
    selected, records = set(kept), []
    for token in kept:
        parts = parts_of(token)
        left = parts[0]
        for right in parts[1:]:
            merged = left + right
            new_id = add(left, right, merged)
            if new_id is not None:
                records.append(
                    {
                        "id": new_id,
                        "token": merged,
                        "text": text_of(merged),
                        "count": counted(merged, counts),
                        "documents": counted(merged, doc_freq),
                        "intermediate": merged not in selected,
                        "pieces": pieces_of(left, right, merged),
                    }
                )
            left = merged
    return records


def _write_record(
    out_dir: Path, records: list[dict], kept: list[str], excluded: Counter, vocab_size: int, config
) -> dict:
    """``new_tokens.json``: the summary and one record per token entered; returns the summary."""
    summary = {
        "added": len(records),
        "selected": len(kept),
        "intermediates": sum(r["intermediate"] for r in records),
        "excluded": dict(excluded),
        "first_new_id": records[0]["id"] if records else None,
        "vocab_size": vocab_size,
        "min_count": config.min_count,
    }
    (out_dir / "new_tokens.json").write_text(
        json.dumps({"summary": summary, "tokens": records}, ensure_ascii=False, indent=1) + "\n"
    )
    return summary


def expand(
    base_dir: str | Path,
    new_dir: str | Path,
    texts: Iterable[str],
    out_dir: str | Path,
    config: ExpansionConfig,
) -> dict:
    """Write the expanded tokenizer and ``new_tokens.json`` to ``out_dir``; returns a summary."""
    from tokenizers import Tokenizer

    base_dir, new_dir, out_dir = Path(base_dir), Path(new_dir), Path(out_dir)
    if config.script not in SCRIPTS:
        raise UserError(f"unknown script {config.script!r}; known: {sorted(SCRIPTS)}")
    spec = _load_spec(base_dir)
    new_spec = _load_spec(new_dir)
    if spec["model"].get("type") != "BPE" or new_spec["model"].get("type") != "BPE":
        raise UserError("both tokenizers must be byte-level BPE tokenizer.json files")
    base_vocab: dict[str, int] = spec["model"]["vocab"]
    new_vocab: dict[str, int] = new_spec["model"]["vocab"]

    new_tok = Tokenizer.from_file(str(new_dir / "tokenizer.json"))
    counts, doc_freq = count_tokens(new_tok, texts)
    kept, excluded = _select(
        [t for t in new_vocab if t not in base_vocab], new_vocab, counts, doc_freq, config
    )

    # The chains' merges are appended after every base merge: base merges run first inside a
    # word, so a chain is exactly what can fire next, and each kept token really is produced.
    base_tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    # HF tokenizers gives an added token that is missing from the model vocabulary the id
    # len(vocab) + k when loading, which would move every special token once the vocabulary
    # grows; writing them into the vocabulary at their own ids pins them.
    for added in spec.get("added_tokens", []):
        base_vocab.setdefault(added["content"], added["id"])
    new_ids = itertools.count(
        max([*base_vocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    )
    id_to_base = {i: t for t, i in base_vocab.items()}
    string_merges = isinstance(spec["model"]["merges"][0], str)

    def add(left: str, right: str, merged: str) -> int | None:
        if merged in base_vocab:
            return None
        base_vocab[merged] = new_id = next(new_ids)
        id_to_base[new_id] = merged
        spec["model"]["merges"].append(f"{left} {right}" if string_merges else [left, right])
        return new_id

    def pieces_of(left: str, right: str, merged: str) -> list[int]:
        text = token_text(merged)
        if text is None:  # part of a UTF-8 character: its two halves
            return [base_vocab[left], base_vocab[right]]
        return base_tok.encode(text, add_special_tokens=False).ids

    records = _chain_merges(
        kept,
        lambda token: [
            id_to_base[i] for i in base_tok.encode(token_text(token), add_special_tokens=False).ids
        ],
        add,
        token_text,
        pieces_of,
        lambda merged, counter: counter.get(new_vocab.get(merged, -1), 0),
        counts,
        doc_freq,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False) + "\n")
    for name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)
    return _write_record(out_dir, records, kept, excluded, next(new_ids), config)


def expand_sentencepiece(
    base_model: str | Path,
    new_dir: str | Path,
    texts: Iterable[str],
    out_dir: str | Path,
    config: ExpansionConfig,
) -> dict:
    """The same expansion for a SentencePiece BPE base (Llama-2 style ``tokenizer.model``).

    SentencePiece BPE merges any two adjacent symbols whose concatenation is a piece, highest score
    first; new pieces get scores below every existing one (so they apply last, like appended BPE
    merges) along a chain over the base's own segmentation of the token.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as model_pb2
    from tokenizers import Tokenizer

    base_model, new_dir, out_dir = Path(base_model), Path(new_dir), Path(out_dir)
    proto = model_pb2.ModelProto()
    proto.ParseFromString(base_model.read_bytes())
    if proto.trainer_spec.model_type != model_pb2.TrainerSpec.BPE:
        raise UserError(f"{base_model.name} is not a SentencePiece BPE model")
    sp = spm.SentencePieceProcessor(model_file=str(base_model))
    new_spec = _load_spec(new_dir)
    new_vocab: dict[str, int] = new_spec["model"]["vocab"]
    counts, doc_freq = count_tokens(Tokenizer.from_file(str(new_dir / "tokenizer.json")), texts)
    existing = {p.piece: i for i, p in enumerate(proto.pieces)}

    def sp_rule(token: str) -> str | None:
        text = token_text(token)
        if not text.startswith(" "):
            return "not_word_initial"  # SentencePiece prefixes every word with U+2581
        return SKIP if text.replace(" ", "\u2581") in existing else None

    tokens, excluded = _select(list(new_vocab), new_vocab, counts, doc_freq, config, sp_rule)
    kept = [token_text(t).replace(" ", "\u2581") for t in tokens]
    scores = itertools.count(min(p.score for p in proto.pieces) - 1.0, -1.0)

    def add(left: str, right: str, merged: str) -> int | None:
        if merged in existing:
            return None
        new_piece = proto.pieces.add()
        new_piece.piece, new_piece.score = merged, next(scores)
        new_piece.type = model_pb2.ModelProto.SentencePiece.NORMAL
        existing[merged] = len(proto.pieces) - 1
        return existing[merged]

    records = _chain_merges(
        kept,
        lambda piece: _sp_symbols(sp.encode(piece.replace("\u2581", " "), out_type=str)),
        add,
        lambda merged: merged.replace("\u2581", " "),
        lambda left, right, merged: sp.encode(merged.replace("\u2581", " ")),
        lambda merged, counter: counter.get(
            new_vocab.get(byte_level(merged.replace("\u2581", " ")), -1), 0
        ),
        counts,
        doc_freq,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(proto.SerializeToString())
    return _write_record(out_dir, records, kept, excluded, len(proto.pieces), config)


def _sp_symbols(pieces: list[str]) -> list[str]:
    """SentencePiece pieces with byte-fallback runs (``<0xEC><0x84><0xA0>``) turned back into the
    characters BPE merges actually see."""
    symbols, pending = [], bytearray()
    for piece in pieces:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            pending.append(int(piece[3:5], 16))
            continue
        if pending:
            symbols.extend(pending.decode("utf-8", errors="replace"))
            pending.clear()
        symbols.append(piece)
    if pending:
        symbols.extend(pending.decode("utf-8", errors="replace"))
    return [s for s in symbols if s]


def _load_spec(folder: Path) -> dict:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path} not found: expected an HF tokenizer directory")
    return json.loads(path.read_text(encoding="utf-8"))
