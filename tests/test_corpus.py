"""The corpus pipeline on the real bundled corpora: accounting, dedup, determinism, resume, KenLM,
and the same result from the local, Slurm and Ray executors."""

from __future__ import annotations

import json
import lzma
import random
import sys

import numpy as np
import pytest
from conftest import ROOT, SCRIPT_ENV, ok, run

from motif_megatron.data import minhash as mh


def _texts(name: str) -> list[dict]:
    raw = lzma.decompress((ROOT / f"examples/data/corpus/{name}.jsonl.xz").read_bytes()).decode()
    return [json.loads(line) for line in raw.splitlines()]


@pytest.fixture(scope="module")
def ko_input(tmp_path_factory):
    """Real Korean pages plus a planted exact duplicate, a planted near-duplicate and bad lines."""
    from motif_megatron.data.pipeline import CorpusConfig, build_filters

    docs = _texts("ko-libreoffice-help")[:300]
    filters = build_filters(CorpusConfig(language="ko"))
    korean = [d for d in docs if not any(f.check(d["text"]) for f in filters)]
    exact = dict(korean[0], id="planted-exact")
    near_text = korean[1]["text"].replace("LibreOffice", "리브레오피스", 1) + " 추가 문장."
    near = dict(korean[1], id="planted-near", text=near_text)
    lines = [json.dumps(d, ensure_ascii=False) for d in [*docs, exact, near]]
    lines.insert(150, '{"id": "s", "text": "\\ud800 홀로 남은 서로게이트"}')  # valid JSON, not text
    lines += ['{"id": "x", "text": 5}', "{broken json", '{"id": "y"}']
    path = tmp_path_factory.mktemp("corpus") / "ko.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe bad bytes\n")
    return path, len(docs) + 2 + 5, korean[0]["id"], korean[1]["id"]


def _run(ko_input, out, *flags, timeout=600):
    path, *_ = ko_input
    args = ["tools/preprocess_corpus.py", "--input", str(path), "--output", str(out), *flags]
    ok(run(args, timeout=timeout))
    report = json.loads((out / "report.json").read_text())
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    kept = [
        json.loads(line)
        for f in sorted((out / "kept").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    return report, removed, kept


def test_every_document_is_accounted_for(tmp_path, ko_input):
    _, total, exact_of, near_of = ko_input
    report, removed, kept = _run(ko_input, tmp_path / "out", "--tasks", "5", "--workers", "2")
    assert report["input"] == total == report["kept"] + report["filtered"] + report["rejected"]
    assert report["kept"] == len(kept) and report["filtered"] == len(removed)
    assert sum(report["by_filter"].values()) == report["filtered"]
    assert report["kept_chars"] == sum(len(d["text"]) for d in kept)
    assert set(report["throughput"]) == {"filter", "exact-dedup", "minhash"}
    assert all(t["tasks"] == 5 and t["peak_rss_mb_max"] > 0 for t in report["throughput"].values())
    rejects = [json.loads(line) for line in (tmp_path / "out/rejects.jsonl").open()]
    assert sorted(r["reason"] for r in rejects) == sorted(
        ["lone_surrogate", "non_string_text", "malformed_json", "missing_text", "invalid_utf8"]
    )
    # tasks read their pieces from a seek, not from the start: the lines are numbered file-wide
    # all the same (each at its byte offset), the surrogate's in the middle of the file
    raw = ko_input[0].read_bytes().split(b"\n")
    starts = np.cumsum([0] + [len(line) + 1 for line in raw])
    assert [r["offset"] for r in rejects] == [int(starts[r["line"]]) for r in rejects]
    assert rejects[0]["line"] == 150 and rejects[-1]["line"] == len(raw) - 2
    by_id = {r["id"]: r for r in removed}
    assert by_id["planted-exact"]["filter"] == "exact_dedup"  # the original comes first and stays
    assert by_id["planted-near"]["filter"] == "minhash"
    kept_ids = {d["id"] for d in kept}
    assert exact_of in kept_ids and near_of in kept_ids
    assert all(
        r["filter"] in {"language", "length", "numeric", "repetition", "exact_dedup", "minhash"}
        for r in removed
    )
    assert any(
        r["filter"] == "language" for r in removed
    )  # untranslated pages exist in this corpus
    for name in ("report.md", "report.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert not (tmp_path / "out/work").exists()  # intermediates go after a complete run


def test_output_is_deterministic_across_tasks_and_stages_switch_off(tmp_path, ko_input):
    a = _run(ko_input, tmp_path / "a", "--tasks", "1")
    b = _run(ko_input, tmp_path / "b", "--tasks", "4", "--workers", "2")
    assert a[2] == b[2] and a[1] == b[1]
    report, removed, _ = _run(
        ko_input,
        tmp_path / "c",
        "--no-minhash",
        "--no-exact-dedup",
        "--no-repetition",
        "--language",
        "none",
    )
    assert {r["filter"] for r in removed} <= {"length", "numeric"}
    assert report["kept"] > a[0]["kept"]


def test_quality_filters_are_datatroves_with_korean_settings(tmp_path, ko_input):
    """--quality-filters gopher c4 fineweb --ftfy: each filter removes documents, each removal
    is that datatrove filter's own verdict (FineWeb-2's Korean settings) on the repaired NFC
    text, with its reason and an example in the report, and every kept document passes all."""
    import unicodedata

    from datatrove.data import Document
    from datatrove.pipeline.formatters import FTFYFormatter

    pytest.importorskip("kiwipiepy", reason="pip install -e .[quality] (part of the dev extra)")
    from motif_megatron.data.filters.quality import quality_filters

    names = ["gopher", "c4", "fineweb"]
    flags = ["--language", "ko", "--quality-filters", *names, "--ftfy", "--no-minhash"]
    report, removed, kept = _run(ko_input, tmp_path / "q", *flags, "--no-exact-dedup")
    filters = {f.name: f for f in quality_filters(names, "ko")}
    source = {}
    for line in ko_input[0].read_bytes().splitlines():
        try:
            record = json.loads(line)
            text = FTFYFormatter().format(record["text"])
            source[record["id"]] = unicodedata.normalize("NFC", text)
        except (ValueError, KeyError, TypeError, UnicodeError):
            continue
    for name, block in filters.items():
        dropped = [r for r in removed if r["filter"] == name]
        assert dropped, name
        for r in dropped:
            assert block.filter(Document(source[r["id"]], r["id"])) == (False, r["reason"])
        assert any(key.startswith(f"{name}/") for key in report["examples"])
    for doc in kept:
        assert all(f.filter(Document(doc["text"], doc["id"])) is True for f in filters.values())


def test_resume_skips_finished_tasks_and_refuses_a_changed_config(tmp_path, ko_input):
    import gzip

    out = tmp_path / "out"
    _run(ko_input, out, "--tasks", "2", "--keep-work")
    # a run killed before its last stages: their markers gone, a finished stage's output edited
    for stage in ("minhash", "report"):
        for marker in (out / "logs" / stage / "completions").iterdir():
            marker.unlink()
    survivors = out / "work" / "exact-dedup" / "00001.jsonl.gz"
    docs = [json.loads(line) for line in gzip.decompress(survivors.read_bytes()).splitlines()]
    docs[0]["text"] += " (resumed)"
    survivors.write_bytes(gzip.compress("".join(json.dumps(d) + "\n" for d in docs).encode()))
    _, _, kept = _run(ko_input, out, "--tasks", "2", "--workers", "2")
    assert any(d["text"].endswith(" (resumed)") for d in kept)  # the earlier stages were skipped
    path, *_ = ko_input
    args = ["tools/preprocess_corpus.py", "--input", str(path), "--output", str(out)]
    result = run([*args, "--tasks", "2", "--min-chars", "80"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {out} holds a run with a different configuration (min_chars changed): "
        "use a new --output, or delete it to start over"
    )


def _same_as_local(tmp_path, ko_input, name, *flags):
    """The run on another executor keeps, removes and rejects what the local one does."""
    local = _run(ko_input, tmp_path / "local", "--tasks", "3")
    report, removed, kept = _run(ko_input, tmp_path / name, "--tasks", "3", *flags)
    assert [d["id"] for d in kept] == [d["id"] for d in local[2]] and removed == local[1]
    assert {k: report[k] for k in ("input", "kept", "filtered", "rejected")} == {
        k: local[0][k] for k in ("input", "kept", "filtered", "rejected")
    }
    rejects = (tmp_path / name / "rejects.jsonl").read_text()
    assert rejects == (tmp_path / "local/rejects.jsonl").read_text() and rejects


def test_slurm_executor_keeps_the_documents_local_keeps(tmp_path, ko_input, slurm):
    """datatrove's Slurm executor on the real cluster: job arrays chained by dependencies, each
    stage's tasks asking for their kind's memory, waited for; a partition the cluster lacks is
    one line."""
    flags = ["--executor", "slurm", "--workers", "2", "--slurm-time", "0:10:00"]
    flags += ["--mem-per-cpu-gb", "1", "--global-mem-gb", "3"]
    _same_as_local(tmp_path, ko_input, "slurm", *flags)
    logs = tmp_path / "slurm/logs"
    assert list((logs / "filter/slurm").glob("*.out"))  # ran as Slurm jobs
    # document tasks ask for their memory, global ones (one task, every share's output) for theirs
    for stage, memory in (("filter", "1G"), ("minhash-cluster", "3G"), ("report", "3G")):
        assert (
            f"#SBATCH --mem-per-cpu={memory}" in (logs / stage / "launch_script.slurm").read_text()
        )
    path, *_ = ko_input
    args = ["tools/preprocess_corpus.py", "--input", str(path), "--output", str(tmp_path / "x")]
    result = run([*args, "--executor", "slurm", "--slurm-partition", "nope"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --slurm-partition nope:")


def test_ray_executor_keeps_the_documents_local_keeps(tmp_path, ko_input):
    """datatrove's Ray executor on a local Ray cluster (ray.init in the tool)."""
    pytest.importorskip("ray", reason="pip install ray (part of the dev extra)")
    _same_as_local(tmp_path, ko_input, "ray", "--executor", "ray", "--workers", "2")


@pytest.fixture
def s3(monkeypatch):
    """A local S3 endpoint (moto's server, what datatrove's own tests use), named to the tools
    by the standard AWS environment; yields its fsspec filesystem with a bucket ``corpus``."""
    server = pytest.importorskip("moto.server", reason="pip install 'moto[s3,server]' s3fs")
    pytest.importorskip("s3fs", reason="pip install s3fs (the s3 extra)")
    moto = server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    env |= {"AWS_ACCESS_KEY_ID": "motif", "AWS_SECRET_ACCESS_KEY": "motif"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
        monkeypatch.setitem(SCRIPT_ENV, key, value)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("corpus")
    yield fs
    moto.stop()


def test_output_to_an_fsspec_url_is_the_local_output(tmp_path, ko_input, s3):
    """``--output s3://...`` through datatrove's storage layer: the same kept, removed, rejected
    records and report as a local output; the intermediates in ``--work-dir``, then removed."""
    local = _run(ko_input, tmp_path / "local", "--tasks", "3", "--workers", "2")
    path, *_ = ko_input
    args = ["tools/preprocess_corpus.py", "--input", str(path), "--output", "s3://corpus/ko"]
    result = run([*args, "--tasks", "3"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --output s3://corpus/ko is remote: give --work-dir, a folder all tasks share"
    )
    work = tmp_path / "shared"
    ok(run([*args, "--tasks", "3", "--workers", "2", "--work-dir", str(work)]))
    assert sorted(p.name for p in work.iterdir()) == ["logs"]  # work/ went after the run
    results = ["config.json", "kept", "rejects.jsonl", "removed.jsonl", "report.json"]
    results += ["report.md", "report.png"]
    assert sorted(s3.ls("corpus/ko", detail=False)) == [f"corpus/ko/{n}" for n in results]
    for name in ("removed.jsonl", "rejects.jsonl", "config.json"):
        assert s3.cat(f"corpus/ko/{name}") == (tmp_path / "local" / name).read_bytes()
    kept = sorted(s3.ls("corpus/ko/kept", detail=False))
    assert [p.rsplit("/", 1)[1] for p in kept] == sorted(
        p.name for p in (tmp_path / "local/kept").iterdir()
    )
    for p in kept:
        assert s3.cat(p) == (tmp_path / "local/kept" / p.rsplit("/", 1)[1]).read_bytes()
    report = json.loads(s3.cat("corpus/ko/report.json"))
    counts = ("input", "kept", "filtered", "rejected", "by_filter", "lsh")
    assert {k: report[k] for k in counts} == {k: local[0][k] for k in counts}
    assert s3.cat("corpus/ko/report.png")[:8] == b"\x89PNG\r\n\x1a\n"


def _datatrove_clusters(docs: list[str], config, folder) -> np.ndarray:
    """Each document's cluster from our signatures through datatrove's bucket and cluster
    stages, the documents split over two tasks (pairs across tasks count too)."""
    import struct

    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster

    from motif_megatron.data.blocks import MinhashSignatures
    from motif_megatron.data.pipeline import datatrove_minhash

    dt, half = datatrove_minhash(config), len(docs) // 2
    shares = [docs[:half], docs[half:]]

    def source(data, rank, world_size):
        yield from (Document(text, str(i)) for i, text in enumerate(shares[rank]))

    sigs, buckets, ids = (str(folder / k) for k in ("sigs", "buckets", "ids"))
    for name, pipeline, tasks in (
        ("sigs", [source, MinhashSignatures(sigs, config)], 2),
        ("buckets", [MinhashDedupBuckets(sigs, buckets, config=dt)], dt.num_buckets),
        ("cluster", [MinhashDedupCluster(buckets, ids, config=dt, save_cluster_id=True)], 1),
    ):
        LocalPipelineExecutor(pipeline, tasks=tasks, logging_dir=str(folder / name)).run()
    cluster = -1 - np.arange(len(docs))  # singletons: a cluster each
    for rank, offset in ((0, 0), (1, half)):
        path = folder / "ids" / f"{rank:06d}.clusters"
        pairs = struct.iter_unpack("<2I", path.read_bytes()) if path.is_file() else []
        for doc, cid in pairs:
            cluster[offset + doc] = cid
    return cluster


def test_minhash_finds_near_duplicates(tmp_path):
    """Recall and precision against exact shingle-set Jaccard, with planted near-duplicates,
    through the out-of-core stages the pipeline runs."""
    rng = random.Random(0)
    docs = [d["text"] for d in _texts("ko-libreoffice-help")]
    for i in range(30):  # edit 1% of the characters of 30 long documents
        text = list(docs[i * 7])
        for k in rng.sample(range(len(text)), len(text) // 100):
            text[k] = "가"
        docs.append("".join(text))
    config = mh.MinHashConfig(threshold=0.8)
    sig = mh.signatures(docs, config, threads=2)
    shingles = [set(mh.shingles(t, config.ngram)) for t in docs]
    pairs = [(rng.randrange(len(docs)), rng.randrange(len(docs))) for _ in range(300)]
    exact = np.array(
        [len(shingles[i] & shingles[j]) / len(shingles[i] | shingles[j]) for i, j in pairs]
    )
    estimate = np.array([(sig[i] == sig[j]).mean() for i, j in pairs])
    assert np.abs(exact - estimate).max() < 0.15  # 128 permutations: std <= 0.045

    def jaccard(i, j):
        return len(shingles[i] & shingles[j]) / len(shingles[i] | shingles[j])

    lengths = [len(s) for s in shingles]
    true_pairs = {
        (i, j)
        for i in range(len(docs))
        for j in range(i + 1, len(docs))
        if min(lengths[i], lengths[j]) >= 0.8 * max(lengths[i], lengths[j])
        and jaccard(i, j) >= 0.85
    }
    assert len(true_pairs) >= 30
    cluster = _datatrove_clusters(docs, config, tmp_path)
    # b=13, r=8 makes a pair of Jaccard 0.85 a candidate with probability 0.98
    recall = np.mean([cluster[i] == cluster[j] for i, j in true_pairs])
    assert recall >= 0.9
    members = {}
    for i, c in enumerate(cluster):
        members.setdefault(c, []).append(i)
    merged = [(m[0], i) for m in members.values() for i in m[1:]]
    # precision: the share of merged documents at Jaccard >= 0.5 to their cluster's first, against
    # the share of datasketch's LSH candidate pairs (same signatures and bands) at >= 0.5. These
    # templated help pages hold many pairs at 0.5-0.8, which 13 x 8 catches by design
    # (measured: 0.81 here against datasketch's 0.71)
    theirs = _datasketch_pairs(sig, config)
    assert merged and theirs
    ours = np.mean([jaccard(a, b) >= 0.5 for a, b in merged])
    assert ours >= np.mean([jaccard(a, b) >= 0.5 for a, b in theirs]) - 0.05


def _datasketch_pairs(sig: np.ndarray, config) -> set[tuple[int, int]]:
    """The candidate pairs of datasketch's MinHashLSH over ``sig`` at ``config``'s bands."""
    from datasketch import MinHash, MinHashLSH

    def minhash(row):
        return MinHash(num_perm=config.num_perm, hashvalues=row, scheme="affine32")

    lsh = MinHashLSH(num_perm=config.num_perm, params=config.bands())
    for k, row in enumerate(sig):
        lsh.insert(k, minhash(row))
    return {(i, j) for i, row in enumerate(sig) for j in lsh.query(minhash(row)) if i < j}


def test_dedup_meets_its_stated_threshold(tmp_path):
    """Planted pairs over a spread of exact Jaccard: the banding chosen for 0.8 at recall 0.9
    (13 x 8) catches at least 90% of the pairs at Jaccard >= 0.85 through the pipeline's stages
    (datasketch's own 9 x 13 would catch ~69% there), and its precision (share of the caught pairs
    at >= 0.8) is datasketch's MinHashLSH's at the same bands within 0.05."""
    rng = random.Random(1)
    base = [d["text"] for d in _texts("ko-libreoffice-help") if len(d["text"]) > 1500][:120]
    docs = list(base)
    for text in base:  # one copy each, 0-4% of its characters replaced: Jaccard ~0.6-1
        chars = list(text)
        for k in rng.sample(range(len(chars)), int(len(chars) * rng.uniform(0, 0.04))):
            chars[k] = chr(0xAC00 + rng.randrange(11172))
        docs.append("".join(chars))
    config = mh.MinHashConfig(threshold=0.8)
    assert config.bands() == (13, 8)
    shingles = [set(mh.shingles(t, config.ngram)) for t in docs]
    n = len(base)
    exact = np.array(
        [len(shingles[i] & shingles[i + n]) / len(shingles[i] | shingles[i + n]) for i in range(n)]
    )
    assert (exact >= 0.85).sum() >= 30 and ((exact > 0.6) & (exact < 0.8)).sum() >= 15
    cluster = _datatrove_clusters(docs, config, tmp_path)
    ours = np.array([cluster[i] == cluster[i + n] for i in range(n)])
    assert ours[exact >= 0.85].mean() >= 0.9
    pairs = _datasketch_pairs(mh.signatures(docs, config), config)
    theirs = np.array([(i, i + n) in pairs for i in range(n)])
    precision = [(exact[caught] >= 0.8).mean() for caught in (ours, theirs)]
    assert abs(precision[0] - precision[1]) <= 0.05, precision


def test_minhash_signatures_are_datasketchs():
    """Bit for bit datasketch's affine32 signatures over the same shingles: Korean and English
    text, texts shorter than a shingle, the empty text, a lone surrogate, and shingles longer
    than one SHA-1 block (which the kernel hashes one by one) between short ones; and its SHA-1
    against hashlib at every length around the block boundaries."""
    import hashlib
    import struct

    from datasketch import MinHash
    from motif_megatron._minhash import sha1_hash32

    messages = [bytes((7 * k + n) % 256 for k in range(n)) for n in range(300)]
    expected = [struct.unpack("<I", hashlib.sha1(m).digest()[:4])[0] for m in messages]
    assert sha1_hash32(messages) == expected
    docs = [d["text"] for d in _texts("ko-libreoffice-help")[:200]]
    docs += [d["text"] for d in _texts("en-python-docs")[:50]]
    docs += ["", "a", "가나", "abcde", "x\ud800yz 가나다라마바", "한" * 30 + "ab" * 40]
    for config in (mh.MinHashConfig(seed=3), mh.MinHashConfig(ngram=19, num_perm=64, seed=1)):
        shingles = [[s.encode(*mh.ENCODING) for s in mh.shingles(t, config.ngram)] for t in docs]
        ref = MinHash.bulk(shingles, num_perm=config.num_perm, seed=config.seed, scheme="affine32")
        ours = mh.signatures(docs, config, threads=2)
        assert ours.dtype == np.uint32
        np.testing.assert_array_equal(ours, np.stack([m.hashvalues for m in ref]))


def test_minhash_estimates_jaccard_without_bias():
    """Over every pair of the bundled corpus (planted near-duplicates included) with exact
    Jaccard >= 0.5, the signatures' mean error stays near zero (about +-0.002 over 8 seeds in
    bench/minhash.py; the rolling-hash signatures these replaced reached +0.012)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from minhash import exact_jaccard, load_docs

    docs = load_docs(None)
    exact = exact_jaccard(docs, 5)
    i, j = np.triu_indices(len(docs), 1)
    near = exact[i, j] >= 0.5
    i, j = i[near], j[near]
    assert len(i) > 100
    errors = [
        (sig[i] == sig[j]).mean(1) - exact[i, j]
        for sig in (mh.signatures(docs, mh.MinHashConfig(seed=s)) for s in range(1, 9))
    ]
    assert abs(np.mean(errors)) < 0.006


@pytest.fixture(scope="module")
def kenlm_model(tmp_path_factory):
    pytest.importorskip("kenlm", reason="pip install kenlm (part of the dev extra)")
    ok(run(["tools/build_kenlm.py"], timeout=1800))  # `make kenlm`: a no-op once built
    ko = [
        d for d in _texts("ko-libreoffice-help") if sum("가" <= c <= "힣" for c in d["text"]) > 300
    ]
    ref = tmp_path_factory.mktemp("lm") / "ref.jsonl"
    ref.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in ko[:-40]))
    out = ref.parent / "ko"
    ok(
        run(
            [
                "tools/train_kenlm.py",
                "--input",
                str(ref),
                "--out",
                str(out),
                "--order",
                "4",
                "--vocab-size",
                "2000",
            ],
            timeout=1800,
        )
    )
    return out.with_suffix(".bin"), ko[-40:]


def test_kenlm_scores_language_lower_than_noise(kenlm_model):
    from motif_megatron.data.kenlm import KenLMScorer

    model, held_out = kenlm_model
    scorer = KenLMScorer(model)
    rng = random.Random(0)
    clean = [scorer.perplexity(d["text"]) for d in held_out]
    noise = [scorer.perplexity("".join(rng.sample(d["text"], len(d["text"])))) for d in held_out]
    assert np.median(clean) * 3 < np.median(noise)


def test_perplexity_stage_drops_both_tails(tmp_path, ko_input, kenlm_model):
    model, _ = kenlm_model
    report, removed, _ = _run(
        ko_input,
        tmp_path / "out",
        "--kenlm-model",
        str(model),
        "--ppl-method",
        "percentile",
        "--ppl-percentiles",
        "10",
        "90",
    )
    reasons = {r["reason"] for r in removed if r["filter"] == "perplexity"}
    assert reasons == {"ppl_low", "ppl_high"}
    assert report["perplexity"]["low"] < report["perplexity"]["high"]


def test_language_auto_picks_the_majority_script(tmp_path):
    from conftest import bundled_corpus

    en, _ = bundled_corpus(tmp_path, "en-python-docs", n=30)
    ok(run(["tools/preprocess_corpus.py", "--input", str(en), "--output", str(tmp_path / "en")]))
    report = json.loads((tmp_path / "en/report.json").read_text())
    assert report["language"] == "en" and report["kept"] > 0
    assert "language/hangul_ratio" not in report["by_filter"]


def test_global_stages_get_memory_for_the_corpus_size(tmp_path):
    """Default global-stage memory grows with the input text (compressed files at 4x), document
    tasks keep theirs; an explicit --global-mem-gb wins."""
    from motif_megatron.data.executors import Resources, Stage, global_memory_gb
    from motif_megatron.data.readers import text_bytes

    assert global_memory_gb(0) == 2 and global_memory_gb(100 * 10**9) == 12
    plain, packed = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    plain.write_bytes(b"x" * 1000)
    packed.write_bytes(b"y" * 1000)
    assert text_bytes([plain, packed]) == 5000
    resources = Resources(cpus_per_task=2, mem_per_cpu_gb=3, global_cpus=2, global_mem_gb=5)
    document, merge = Stage("filter", [], 8), Stage("minhash-cluster", [], 1, "global")
    assert resources.of(document) == {"cpus_per_task": 2, "mem_per_cpu_gb": 3}
    assert resources.of(merge) == {"cpus_per_task": 2, "mem_per_cpu_gb": 3}  # 5 GB on 2 CPUs
