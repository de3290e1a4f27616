"""Every input format yields the same documents; bad units become rejects with a reason."""

from __future__ import annotations

import gzip
import json
import lzma

import pytest

from motif_megatron.data.readers import Document, Reject, iter_documents
from motif_megatron.errors import UserError

RECORDS = [{"id": "a", "text": "첫 번째 문서"}, {"id": "b", "text": "second document"}]


def _docs(path, **kw):
    return [(r.id, r.text) for r in iter_documents(path, **kw) if isinstance(r, Document)]


def test_jsonl_gz_zst_xz_and_parquet_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS).encode()
    (tmp_path / "c.jsonl").write_bytes(raw)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (tmp_path / "c.jsonl.xz").write_bytes(lzma.compress(raw))
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "c.parquet")
    expected = [("a", "첫 번째 문서"), ("b", "second document")]
    for name in ("c.jsonl", "c.jsonl.gz", "c.jsonl.zst", "c.jsonl.xz", "c.parquet"):
        assert _docs(tmp_path / name) == expected, name


def test_text_folder(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "b.txt").write_text("bee")
    (tmp_path / "docs" / "sub" / "a.md").write_text("ay")
    (tmp_path / "docs" / "bad.txt").write_bytes(b"\xff")
    results = list(iter_documents(tmp_path / "docs"))
    assert [(r.id, r.text) for r in results if isinstance(r, Document)] == [
        ("b.txt", "bee"),
        ("sub/a.md", "ay"),
    ]
    assert [r.reason for r in results if isinstance(r, Reject)] == ["invalid_utf8"]


def test_custom_keys_and_missing_ids(tmp_path):
    path = tmp_path / "k.jsonl"
    path.write_text('{"body": "x"}\n{"body": "y", "uid": 7}\n')
    assert _docs(path, text_key="body", id_key="uid") == [("k.jsonl@0", "x"), ("7", "y")]
    gz = tmp_path / "k.jsonl.gz"  # compressed: no byte offsets, a line number
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert _docs(gz, text_key="body", id_key="uid") == [("k.jsonl.gz:0", "x"), ("7", "y")]


def test_unsupported_input(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match="unsupported input"):
        iter_documents(tmp_path / "x.csv")


def test_units_split_a_file_into_whole_lines_with_the_same_ids(tmp_path):
    from motif_megatron.data.readers import input_files, input_units, task_units

    lines = [json.dumps({"text": f"문서 {i} " + "x" * (i % 7)}) for i in range(50)] + ["{bad"]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    whole = [(r.offset, getattr(r, "id", None)) for r in iter_documents(tmp_path / "a.jsonl")]
    for tasks in (1, 2, 3, 7, 50, 200):
        units = input_units(input_files(tmp_path / "a.jsonl"), tasks)
        shares = [task_units(units, rank, tasks) for rank in range(tasks)]
        got = [
            (r.offset, getattr(r, "id", None))
            for s in shares
            for u in s
            for r in u.documents("text", "id")
        ]
        assert got == whole, tasks
        assert sum(map(len, shares)) == len(units) >= min(tasks, 2)


def test_input_is_a_file_a_folder_or_a_glob(tmp_path):
    from motif_megatron.data.readers import input_files

    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.jsonl", "d/sub/a.jsonl.gz", "d/c.parquet", "d/notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in input_files(tmp_path / "d")] == ["b.jsonl", "c.parquet", "a.jsonl.gz"]
    assert [p.name for p in input_files(f"{tmp_path}/d/**/*.jsonl*")] == ["b.jsonl", "a.jsonl.gz"]
    with pytest.raises(UserError, match="no file matches"):
        input_files(f"{tmp_path}/d/*.zst")
    (tmp_path / "t").mkdir()
    assert input_files(tmp_path / "t") == [tmp_path / "t"]  # a folder of text files is one unit


def _reasons(path) -> tuple[list[str], list[str]]:
    results = list(iter_documents(path))
    texts = [r.text for r in results if isinstance(r, Document)]
    return texts, [r.reason for r in results if isinstance(r, Reject)]


def test_lone_surrogates_are_rejects_not_crashes(tmp_path):
    path = tmp_path / "s.jsonl"
    lines = ['{"text": "앞 \\ud800 뒤"}', '{"text": "ok \\ud55c"}', '{"text": "짝 \\ud83d\\ude00"}']
    lines.append('{"text": "id", "id": "\\udfff"}')
    path.write_text("\n".join(lines) + "\n")
    texts, reasons = _reasons(path)
    assert texts == ["ok 한", "짝 😀"]  # an escaped syllable and a surrogate pair are text
    assert reasons == ["lone_surrogate", "lone_surrogate"]


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".zst"])
def test_a_cut_or_mislabelled_compressed_file_keeps_what_came_before(tmp_path, suffix):
    import zstandard

    compress = {
        ".gz": gzip.compress,
        ".xz": lzma.compress,
        ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
    }[suffix]
    texts = [f"문서 {i} " + "가나다라" * (i % 50 + 200) for i in range(400)]
    raw = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode()
    whole = compress(raw)
    cut = tmp_path / f"cut.jsonl{suffix}"
    cut.write_bytes(whole[: len(whole) // 2])
    got, reasons = _reasons(cut)
    assert 0 < len(got) < len(texts) and got == texts[: len(got)]
    # the line torn by the cut (if its start came through) is malformed, the cut itself one reject
    assert reasons[-1] in ("truncated_file", "corrupt_file") and len(reasons) <= 2
    assert set(reasons[:-1]) <= {"malformed_json"}
    fake = tmp_path / f"plain.jsonl{suffix}"
    fake.write_bytes(raw[:1000])
    assert _reasons(fake) == ([], [f"not_{suffix[1:]}"])


def test_two_files_of_one_name_in_two_folders_keep_apart(tmp_path):
    """Sources are paths from the input root, so ids without an id field (and rejects) of
    ``a/x.jsonl`` and ``b/x.jsonl`` differ, whether the corpus is the folder or a glob."""
    from motif_megatron.data.readers import input_files, input_root, input_units

    for folder in ("a", "b"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        (tmp_path / "in" / folder / "x.jsonl").write_text('{"text": "같은 이름"}\n{broken\n')
    for spec in (tmp_path / "in", f"{tmp_path}/in/*/x.jsonl"):
        units = input_units(input_files(spec), 1, input_root(spec))
        records = [r for u in units for r in u.documents("text", "id")]
        assert [r.id for r in records if isinstance(r, Document)] == ["a/x.jsonl@0", "b/x.jsonl@0"]
        assert [(r.source, r.offset) for r in records if isinstance(r, Reject)] == [
            ("a/x.jsonl", 26),
            ("b/x.jsonl", 26),
        ]
