"""Indexed shards: byte-identical to Megatron's builder, readable by its IndexedDataset, ids = HF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import bundled_corpus, ok, run, shard

from motif_megatron.data.indexed import IndexedWriter, token_count


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_writer_is_byte_identical_to_megatron_builder(tmp_path, dtype):
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 60000, size=rng.integers(0, 50)) for _ in range(37)]
    ours = IndexedWriter(tmp_path / "ours", dtype)
    ours.add_flat(np.concatenate(docs), [len(d) for d in docs])
    ours.close()
    builder = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for doc in docs:
        builder.add_document(torch.tensor(doc), [len(doc)])
    builder.finalize(str(tmp_path / "theirs.idx"))
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (
            tmp_path / f"theirs{suffix}"
        ).read_bytes()


def test_preprocess_data_matches_hf_tokenizer_and_megatron_reader(tmp_path, llama3_tokenizer):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer

    corpus, texts = bundled_corpus(tmp_path)
    bad = tmp_path / "with_bad.jsonl"
    bad.write_bytes(corpus.read_bytes() + b'{"text": 3}\nnot json\n\xff\xfe\n')
    out = ok(
        run(
            [
                "tools/preprocess_data.py",
                "--input",
                str(bad),
                "--output-prefix",
                str(tmp_path / "ko"),
                "--tokenizer-model",
                str(llama3_tokenizer),
                "--json-keys",
                "text",
                "--append-eod",
                "--workers",
                "2",
                "--partition-docs",
                "128",
            ]
        )
    )
    assert "3 rejected lines" in out
    prefix = str(tmp_path / "ko_text_document")
    dataset = IndexedDataset(prefix)
    assert len(dataset) == len(texts)
    assert dataset.index.dtype == np.int32  # Llama-3's 128k vocabulary does not fit uint16
    reference = Tokenizer.from_file(str(llama3_tokenizer / "tokenizer.json"))
    for i, enc in enumerate(reference.encode_batch(texts, add_special_tokens=False)):
        assert dataset[i].tolist() == [*enc.ids, 128001], i
    assert token_count(prefix) == sum(len(dataset[i]) for i in range(len(dataset)))
    lines = Path(prefix + ".rejects.jsonl").read_text().splitlines()
    reasons = [json.loads(line)["reason"] for line in lines]
    assert reasons == ["non_string_text", "malformed_json", "invalid_utf8"]


def test_preprocess_data_resumes_finished_partitions(tmp_path, llama3_tokenizer):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    corpus, _ = bundled_corpus(tmp_path, "en-python-docs", n=40)
    args = [
        "tools/preprocess_data.py",
        "--input",
        str(corpus),
        "--output-prefix",
        str(tmp_path / "en"),
        "--tokenizer-model",
        str(llama3_tokenizer),
        "--append-eod",
        "--partition-docs",
        "10",
    ]
    ok(run(args))
    prefix = str(tmp_path / "en_text_document")
    full = IndexedDataset(prefix)
    full = [full[i].copy() for i in range(len(full))]
    # a run killed after partition 0: its shard (here zeros, to tell it apart) and marker remain
    part = IndexedWriter(prefix + ".part00000", np.int32)
    part.add_flat(np.zeros(sum(len(d) for d in full[:10])), [len(d) for d in full[:10]])
    part.close()
    made = {k: json.loads(Path(prefix + ".json").read_text())[k] for k in FINGERPRINT}
    marker = tmp_path / "en_text_document.part00000.done"
    marker.write_text(
        json.dumps({"documents": 10, "tokens": sum(len(d) for d in full[:10])} | made)
    )
    ok(run(args))
    resumed = IndexedDataset(prefix)
    assert all(not resumed[i].any() for i in range(10))  # partition 0 was reused, not redone
    assert all(np.array_equal(resumed[i], full[i]) for i in range(10, 40))
    assert not list(tmp_path.glob("*.part*"))  # partitions are merged and removed


def test_a_shard_of_another_tokenizer_is_refused_not_reused(tmp_path, llama3_tokenizer):
    """Re-tokenising into the same prefix with another tokenizer (here: one more added token,
    as vocabulary expansion makes) or without EOD stops in one line, finished shard or
    partition alike; the same settings reuse it."""
    import shutil

    corpus, _ = bundled_corpus(tmp_path, "en-python-docs", n=20)
    expanded = tmp_path / "expanded"
    shutil.copytree(llama3_tokenizer, expanded)
    spec = json.loads((expanded / "tokenizer.json").read_text())
    top = max(t["id"] for t in spec["added_tokens"])
    spec["added_tokens"].append({**spec["added_tokens"][-1], "id": top + 1, "content": "<new>"})
    (expanded / "tokenizer.json").write_text(json.dumps(spec))

    def tokenize(tokenizer, *flags, prefix="en"):
        return run(
            [
                "tools/preprocess_data.py",
                "--input",
                str(corpus),
                "--output-prefix",
                str(tmp_path / prefix),
                "--tokenizer-model",
                str(tokenizer),
                *flags,
            ]
        )

    ok(tokenize(llama3_tokenizer, "--append-eod"))
    for tokenizer, flags in ((expanded, ["--append-eod"]), (llama3_tokenizer, [])):
        refused = tokenize(tokenizer, *flags)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "made with another tokenizer or settings" in refused.stderr
    ok(tokenize(llama3_tokenizer, "--append-eod"))
    ok(tokenize(llama3_tokenizer, "--append-eod", "--tasks", "2", prefix="split"))
    refused = tokenize(expanded, "--append-eod", "--tasks", "2", prefix="split")
    assert refused.returncode == 2 and "split_00000_text_document.json" in refused.stderr


def test_tasks_on_the_local_executor_equal_one_task(tmp_path, llama3_tokenizer):
    """--executor local --tasks 3 --workers 2 (datatrove's local executor, two processes):
    merged, byte-identical to the one-task shard; each task's time and peak memory logged."""
    corpus, _ = bundled_corpus(tmp_path, n=60)
    common = ["--input", str(corpus), "--tokenizer-model", str(llama3_tokenizer), "--append-eod"]
    ok(run(["tools/preprocess_data.py", *common, "--output-prefix", str(tmp_path / "one")]))
    flags = ["--executor", "local", "--tasks", "3", "--workers", "2", "--merge"]
    ok(run(["tools/preprocess_data.py", *common, "--output-prefix", str(tmp_path / "exe"), *flags]))
    for suffix in (".bin", ".idx"):
        one = tmp_path / f"one_text_document{suffix}"
        assert (tmp_path / f"exe_text_document{suffix}").read_bytes() == one.read_bytes()
    from motif_megatron.data.report import stage_stats

    meter = stage_stats(tmp_path / "exe_text_document.logs", "tokenize")["meter"]
    assert meter["seconds"].n == 3 and meter["peak_rss_mb"].max > 0


FINGERPRINT = ("tokenizer_sha256", "append_eod")


@pytest.mark.parametrize("backend", ["gigatoken", "reference"])
def test_backends_agree_on_real_corpora(tmp_path, llama3_tokenizer, backend):
    from motif_megatron.data.tokenize import Encoder

    _, ko = bundled_corpus(tmp_path, n=200)
    _, en = bundled_corpus(tmp_path, "en-python-docs", n=30)
    tokens, lengths = Encoder(llama3_tokenizer, backend).encode(ko + en)
    ref_tokens, ref_lengths = Encoder(llama3_tokenizer, "reference").encode(ko + en)
    assert np.array_equal(lengths, ref_lengths) and np.array_equal(tokens, ref_tokens)


@pytest.mark.parametrize("byte_fallback", [True, False])
def test_sentencepiece_tokenizer(tmp_path, byte_fallback):
    import sentencepiece as spm
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    corpus, texts = bundled_corpus(tmp_path, n=200)
    (tmp_path / "train.txt").write_text("\n".join(texts))
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "train.txt"),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=2000,
        model_type="bpe",
        byte_fallback=byte_fallback,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    dataset = IndexedDataset(shard(tmp_path, tmp_path / "sp.model", "sp", corpus))
    assert dataset.index.dtype == np.uint16  # small vocabularies fit Megatron's uint16 shards
    for i in (0, 57, 199):
        assert dataset[i].tolist() == [*sp.encode(texts[i]), sp.eos_id()]


def test_a_glob_gives_a_shard_per_file_a_blend_and_a_byte_identical_merge(
    tmp_path, llama3_tokenizer
):
    """Three files: one shard each (byte-identical to tokenising that file alone) and a blend
    weighting them by tokens; --merge, and --tasks 4 over the concatenation, equal the shard of
    the concatenated corpus byte for byte."""
    from motif_megatron.data.blend import blend, data_path

    corpus, _ = bundled_corpus(tmp_path, n=90)
    lines = corpus.read_text().splitlines(keepends=True)
    parts = tmp_path / "parts"
    parts.mkdir()
    for k in range(3):
        (parts / f"p{k}.jsonl").write_text("".join(lines[k * 30 : (k + 1) * 30]))
    common = ["--tokenizer-model", str(llama3_tokenizer), "--append-eod", "--partition-docs", "7"]

    def tokenize(source, prefix, *flags):
        ok(
            run(
                [
                    "tools/preprocess_data.py",
                    "--input",
                    str(source),
                    "--output-prefix",
                    str(prefix),
                    *common,
                    *flags,
                ]
            )
        )

    tokenize(f"{parts}/*.jsonl", tmp_path / "glob")
    shards = [str(tmp_path / f"glob_{k:05d}_text_document") for k in range(3)]
    for k, prefix in enumerate(shards):
        tokenize(parts / f"p{k}.jsonl", tmp_path / f"alone{k}")
        for suffix in (".bin", ".idx"):
            alone = tmp_path / f"alone{k}_text_document{suffix}"
            assert Path(prefix + suffix).read_bytes() == alone.read_bytes()
    written = (tmp_path / "glob_text_document.blend").read_text().split()
    assert written == data_path(blend({"corpus": (1.0, shards)}))
    tokenize(corpus, tmp_path / "whole")
    tokenize(f"{parts}/*.jsonl", tmp_path / "merged", "--merge")
    tokenize(corpus, tmp_path / "split", "--tasks", "4", "--merge")
    for name in ("merged", "split"):
        for suffix in (".bin", ".idx"):
            assert (tmp_path / f"{name}_text_document{suffix}").read_bytes() == (
                tmp_path / f"whole_text_document{suffix}"
            ).read_bytes(), (name, suffix)
    assert not list(tmp_path.glob("merged_0*")) and not list(tmp_path.glob("split_0*"))


@pytest.mark.parametrize("executor", ["slurm", "ray"])
def test_tasks_on_slurm_and_ray_equal_one_task(tmp_path, llama3_tokenizer, executor, request):
    """The same tasks as Slurm job arrays on the real cluster, or as Ray tasks on a local Ray
    cluster: merged, byte-identical to the one-task shard."""
    if executor == "slurm":
        request.getfixturevalue("slurm")
    else:
        pytest.importorskip("ray", reason="pip install ray (part of the dev extra)")
    corpus, _ = bundled_corpus(tmp_path, n=40)
    common = ["--input", str(corpus), "--tokenizer-model", str(llama3_tokenizer), "--append-eod"]
    ok(run(["tools/preprocess_data.py", *common, "--output-prefix", str(tmp_path / "one")]))
    flags = ["--executor", executor, "--tasks", "2", "--workers", "2", "--merge"]
    flags += ["--slurm-time", "0:10:00", "--mem-per-cpu-gb", "1"]
    out = tmp_path / executor
    ok(run(["tools/preprocess_data.py", *common, "--output-prefix", str(out), *flags], timeout=900))
    for suffix in (".bin", ".idx"):
        one = tmp_path / f"one_text_document{suffix}"
        assert Path(f"{out}_text_document{suffix}").read_bytes() == one.read_bytes()
    if executor == "slurm":  # ran as Slurm jobs
        assert list(Path(f"{out}_text_document.logs/tokenize/slurm").glob("*.out"))
