"""Vocabulary expansion on the real Llama-3 tokenizer and the bundled corpora."""

from __future__ import annotations

import json

import numpy as np
from conftest import bundled_corpus, ok, run


def test_train_tokenizer_is_deterministic(tmp_path, expanded, llama3_tokenizer):
    tmp, _ = expanded
    ok(
        run(
            [
                "tools/train_tokenizer.py",
                "--input",
                str(tmp / "train.jsonl"),
                "--vocab-size",
                "6000",
                "--out",
                str(tmp_path / "again"),
                "--base",
                str(llama3_tokenizer),
            ]
        )
    )
    assert (tmp_path / "again/tokenizer.json").read_bytes() == (
        tmp / "ko/tokenizer.json"
    ).read_bytes()


def test_expanded_tokenizer_keeps_old_ids_and_round_trips(tmp_path, expanded, llama3_tokenizer):
    from transformers import AutoTokenizer

    tmp, held_out = expanded
    base = AutoTokenizer.from_pretrained(llama3_tokenizer, local_files_only=True)
    new = AutoTokenizer.from_pretrained(tmp / "expanded", local_files_only=True)
    info = json.loads((tmp / "expanded/new_tokens.json").read_text())
    added = info["tokens"]
    assert info["summary"]["first_new_id"] == 128257 == len(base)  # after the last special id
    assert len(new) == len(base) + len(added)
    base_vocab, new_vocab = base.get_vocab(), new.get_vocab()
    assert all(new_vocab[t] == i for t, i in base_vocab.items())  # every old id keeps its meaning
    assert new.all_special_ids == base.all_special_ids
    assert new.convert_ids_to_tokens(list(range(128000, 128257))) == base.convert_ids_to_tokens(
        list(range(128000, 128257))
    )
    _, ko = bundled_corpus(tmp_path, "ko-libreoffice-help")
    _, en = bundled_corpus(tmp_path, "en-python-docs")
    for text in ko + en + ["", " ", "혼합 text 123 🔎︎ \u200b", "\n\n한\n"]:
        ids = new(text, add_special_tokens=False).input_ids
        assert new.decode(ids, clean_up_tokenization_spaces=False) == text
    for text in en:
        assert new(text).input_ids == base(text).input_ids  # English tokenises exactly as before
    base_tokens = sum(len(base(t, add_special_tokens=False).input_ids) for t in held_out)
    new_tokens = sum(len(new(t, add_special_tokens=False).input_ids) for t in held_out)
    assert new_tokens / base_tokens < 0.8  # on Korean text not used for training


def test_new_tokens_are_produced_and_record_their_pieces(expanded, llama3_tokenizer):
    from tokenizers import Tokenizer

    tmp, _ = expanded
    base = Tokenizer.from_file(str(llama3_tokenizer / "tokenizer.json"))
    new = Tokenizer.from_file(str(tmp / "expanded/tokenizer.json"))
    tokens = json.loads((tmp / "expanded/new_tokens.json").read_text())["tokens"]
    selected = [t for t in tokens if not t["intermediate"]]
    assert len(selected) > 300
    for t in tokens:  # pieces under the old tokenizer (intermediates may be part of a character)
        if t["text"] is not None:
            assert base.decode(t["pieces"]) == t["text"]
            assert all(p < 128257 for p in t["pieces"])
    produced = sum(
        new.encode(t["text"], add_special_tokens=False).ids == [t["id"]] for t in selected
    )
    assert produced / len(selected) > 0.95
    assert all(any("가" <= c <= "힣" for c in t["text"]) for t in selected)


def test_tokenizer_report(tmp_path, expanded, llama3_tokenizer):
    tmp, held_out = expanded
    ko = tmp_path / "ko.jsonl"
    ko.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in held_out))
    en, _ = bundled_corpus(tmp_path, "en-python-docs", n=20)
    ok(
        run(
            [
                "tools/tokenizer_report.py",
                "--base",
                str(llama3_tokenizer),
                "--tokenizer",
                str(tmp / "expanded"),
                "--text",
                f"ko={ko}",
                "--text",
                f"en={en}",
                "--out",
                str(tmp_path / "rep"),
            ]
        )
    )
    report = json.loads((tmp_path / "rep/tokenizer_report.json").read_text())
    assert report["languages"]["en"]["token_ratio"] == 1.0
    assert report["languages"]["ko"]["token_ratio"] < 0.8
    assert (tmp_path / "rep/tokenizer_report.png").stat().st_size > 0


def test_sentencepiece_base_expansion(tmp_path, expanded):
    """A Llama-2-style base (SentencePiece BPE with byte fallback) is expanded the same way."""
    import sentencepiece as spm

    tmp, held_out = expanded
    _, en = bundled_corpus(tmp_path, "en-python-docs", n=40)
    (tmp_path / "base.txt").write_text("\n".join(en))  # an English-only base, like Llama-2
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "base.txt"),
        model_prefix=str(tmp_path / "base"),
        vocab_size=3000,
        model_type="bpe",
        byte_fallback=True,
        minloglevel=2,
    )
    ok(
        run(
            [
                "tools/expand_tokenizer.py",
                "--base",
                str(tmp_path / "base.model"),
                "--new",
                str(tmp / "ko"),
                "--corpus",
                str(tmp / "train.jsonl"),
                "--min-count",
                "10",
                "--out",
                str(tmp_path / "out"),
            ]
        )
    )
    base = spm.SentencePieceProcessor(model_file=str(tmp_path / "base.model"))
    new = spm.SentencePieceProcessor(model_file=str(tmp_path / "out/tokenizer.model"))
    assert all(base.id_to_piece(i) == new.id_to_piece(i) for i in range(base.get_piece_size()))
    assert all(base.encode(t) == new.encode(t) for t in en)
    assert all(new.decode(new.encode(t)) == base.decode(base.encode(t)) for t in held_out)
    tokens = json.loads((tmp_path / "out/new_tokens.json").read_text())["tokens"]
    selected = [t for t in tokens if not t["intermediate"]]
    assert sum(new.encode(t["text"]) == [t["id"]] for t in selected) / len(selected) > 0.95
    # the same record as an HF base's: every selected token passed --min-count 10
    assert all(t["count"] >= 10 and t["documents"] >= 1 for t in selected)
    ratio = sum(len(new.encode(t)) for t in held_out) / sum(len(base.encode(t)) for t in held_out)
    assert ratio < 0.8


def test_sample_is_seeded_bounded_and_uniform():
    """One pass, the sample only in memory: bounds hold, a seed gives the same sample, and over
    seeds every document is drawn about equally often (the bottom-k keys are uniform)."""
    from collections import Counter

    from motif_megatron.tokenizer.train import sample_texts

    docs = [f"{i:04d}" + "가" * (i % 13) for i in range(400)]
    sample = sample_texts(iter(docs), sample_docs=40, seed=3)
    assert len(sample) == 40 and sample == sample_texts(iter(docs), sample_docs=40, seed=3)
    assert sample != sample_texts(iter(docs), sample_docs=40, seed=4)
    by_chars = sample_texts(iter(docs), sample_chars=500, seed=3)
    total = sum(map(len, by_chars))
    assert total >= 500 and total - len(by_chars[-1]) < 500
    assert sample_texts(iter(docs)) == docs  # no bound: every document, in order
    drawn = Counter(
        t for seed in range(300) for t in sample_texts(iter(docs), sample_docs=40, seed=seed)
    )
    rates = np.array([drawn[t] for t in docs]) / 300
    assert abs(rates.mean() - 0.1) < 1e-9 and rates.std() < 0.03  # binomial std: 0.017
