"""Every input format yields the same documents; bad units become rejects with a reason."""

from __future__ import annotations

import gzip
import json

import pytest

from motif_megatron.data.readers import Document, Reject, iter_documents
from motif_megatron.errors import UserError

RECORDS = [{"id": "a", "text": "첫 번째 문서"}, {"id": "b", "text": "second document"}]


def _docs(path, **kw):
    return [(r.id, r.text) for r in iter_documents(path, **kw) if isinstance(r, Document)]


def test_jsonl_gz_zst_and_parquet_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS).encode()
    (tmp_path / "c.jsonl").write_bytes(raw)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "c.parquet")
    expected = [("a", "첫 번째 문서"), ("b", "second document")]
    for name in ("c.jsonl", "c.jsonl.gz", "c.jsonl.zst", "c.parquet"):
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
    assert _docs(path, text_key="body", id_key="uid") == [("k.jsonl:0", "x"), ("7", "y")]


def test_unsupported_input(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match="unsupported input"):
        iter_documents(tmp_path / "x.csv")
