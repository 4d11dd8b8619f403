"""Text sets: JSONL reading, ids, metadata, fingerprints, errors, and the paper's chunking."""

from __future__ import annotations

import json

import pytest

from jaxmap.cli import main
from jaxmap.texts import TextSet, TextSetError, chunk_document, load_texts


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_ids_come_from_id_then_index_then_line(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl",
        [
            json.dumps({"id": "a", "text": "first", "domain": "x"}),
            json.dumps({"index": 7, "text": "second"}),
            json.dumps({"text": "third"}),
        ],
    )
    texts = load_texts(path)
    assert texts.ids == ("a", "7", "2")
    assert texts.texts == ("first", "second", "third")
    assert texts.metadata[0] == {"domain": "x"}


def test_empty_and_non_ascii_texts_are_kept(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl",
        [json.dumps({"text": ""}), json.dumps({"text": "東京 🙂 ü"}, ensure_ascii=False)],
    )
    texts = load_texts(path)
    assert texts.texts == ("", "東京 🙂 ü")
    assert texts.byte_lengths == [0, len("東京 🙂 ü".encode())]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"text": "ok"', "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"title": "no text"}', "no 'text' field"),
        ('{"text": 5}', "must be a string"),
    ],
)
def test_malformed_line_error_names_file_and_line(tmp_path, bad_line, message):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps({"text": "fine"}), bad_line])
    with pytest.raises(TextSetError) as error:
        load_texts(path)
    assert f"{path}:2" in str(error.value)
    assert message in str(error.value)


def test_invalid_utf8_and_duplicate_ids_are_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    with pytest.raises(TextSetError, match=r":2: not valid UTF-8"):
        load_texts(path)
    path = write_lines(tmp_path / "dup.jsonl", [json.dumps({"id": 1, "text": "a"}), json.dumps({"id": 1, "text": "b"})])
    with pytest.raises(TextSetError, match="duplicate text id"):
        load_texts(path)


def test_fingerprint_depends_on_ids_texts_and_order():
    base = TextSet.from_texts(["a", "b"])
    assert base.fingerprint == TextSet.from_texts(["a", "b"]).fingerprint
    assert base.fingerprint != TextSet.from_texts(["a", "c"]).fingerprint
    assert base.fingerprint != TextSet.from_texts(["b", "a"], ids=["1", "0"]).fingerprint
    assert base.fingerprint != TextSet.from_texts(["a", "b"], ids=["x", "y"]).fingerprint
    # Boundaries are length-prefixed, so shifting characters between fields changes the hash.
    assert TextSet.from_texts(["ab", "c"]).fingerprint != TextSet.from_texts(["a", "bc"]).fingerprint


def test_chunks_are_utf8_safe_and_within_limits():
    document = ("ab€" * 500) + "tail"  # the euro sign is three bytes, so cuts land mid-character
    chunks = list(chunk_document(document, max_bytes=100, min_bytes=0))
    assert "".join(chunks) == document
    assert all(0 < len(c.encode()) <= 100 for c in chunks)
    kept = list(chunk_document(document, max_bytes=100, min_bytes=98))
    assert kept and all(len(c.encode()) > 98 for c in kept)
    assert len(kept) < len(chunks)


def test_chunk_command_writes_a_text_set(tmp_path, capsys):
    document = tmp_path / "doc.txt"
    document.write_text("word " * 1000, encoding="utf-8")
    out = tmp_path / "chunks.jsonl"
    assert main(["chunk", str(document), "--out", str(out)]) == 0
    texts = load_texts(out)
    sizes = [len(t.encode()) for t in texts.texts]
    assert len(texts) == 5 and all(256 < s <= 1024 for s in sizes)
    assert "5 chunks" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, problem",
    [("bad\u0000byte", "NUL character"), ("half \ud800 pair", "lone surrogate")],
)
def test_unstorable_characters_name_file_line_and_id(tmp_path, text, problem):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps({"id": "fine", "text": "ok"}), json.dumps({"id": "culprit", "text": text})])
    with pytest.raises(TextSetError, match=rf"t.jsonl:2: text 'culprit' contains a {problem}"):
        load_texts(path)
    with pytest.raises(TextSetError, match=rf"text 1 \(id 'culprit'\): contains a {problem}"):
        TextSet.from_texts(["ok", text], ids=["fine", "culprit"])


def test_a_byte_order_mark_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a", "text": "x"}\r\n{"id": "b", "text": "y"}\r\n')
    assert load_texts(path).texts == ("x", "y")
