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


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"text": "a"}\n\xef\xbb\xbf{"text": "b"}\n', ":2: a byte-order mark inside the file"),
        (b'{"id": null, "text": "a"}\n', ":1: 'id' must be a string or an integer, got null"),
        (b'{"index": 1.5, "text": "a"}\n', ":1: 'index' must be a string or an integer, got 1.5"),
        (b'{"id": true, "text": "a"}\n', ":1: 'id' must be a string or an integer, got true"),
        (b'{"id": "a\\u0000b", "text": "a"}\n', ":1: the id 'a\\x00b' contains a NUL character"),
        (b'{"id": "x", "text": "a"}\n\n{"id": "x", "text": "b"}\n', ":3: duplicate text id 'x', first used on line 1"),
        (b'{"id": "1", "text": "a"}\n{"text": "b"}\n', ":2: duplicate text id '1' (its line number"),
        (b'{"text": ["a"]}\n', ":1: 'text' must be a string, got list"),
        ('{"text": "a"}\n'.encode("utf-16"), ": not a JSONL file: it is UTF-16 text"),
        (b"\x1f\x8b\x08\x00\x00\x00", ": not a JSONL file: it is gzip-compressed"),
        (b"", ": no texts"),
        (b" \n\r\n\n", ": no texts"),
    ],
    ids=["bom-inside", "id-null", "index-float", "id-bool", "id-nul", "duplicate", "duplicate-line-number",
         "text-list", "utf-16", "gzip", "empty", "blank-lines"],
)
def test_bad_text_files_are_one_line_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_bytes(content)
    with pytest.raises(TextSetError) as error:
        load_texts(path)
    assert str(error.value).startswith(f"{path}{message}")
    assert "\n" not in str(error.value)


def test_a_directory_or_a_missing_file_is_named(tmp_path):
    with pytest.raises(TextSetError, match="is a directory, not a JSONL text file"):
        load_texts(tmp_path)
    with pytest.raises(TextSetError, match="missing.jsonl: no such text file"):
        load_texts(tmp_path / "missing.jsonl")


def test_writing_a_text_set_is_atomic(tmp_path):
    path = tmp_path / "t.jsonl"
    TextSet.from_texts(["a", "b"]).to_jsonl(path)
    before = path.read_bytes()
    # A lone surrogate in metadata cannot be encoded: the write fails after the first line.
    broken = TextSet(("x", "y"), ("c", "d"), ({}, {"note": "\ud800"}))
    with pytest.raises(UnicodeEncodeError):
        broken.to_jsonl(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]


def test_a_damaged_token_cache_is_rebuilt(tmp_path):
    from conftest import build_tokenizer

    from jaxmap.tokenization import cached_tokenize

    tokenizer = build_tokenizer(tmp_path / "tokenizer", adds_bos=True)
    texts = TextSet.from_texts(["Hello world.", "The quick brown fox."])
    cache = tmp_path / "cache"
    tokens, _ = cached_tokenize(texts, tokenizer, "full", cache)
    (cached,) = cache.iterdir()
    for damage in (cached.read_bytes()[:40], b"", b"not a zip file"):
        cached.write_bytes(damage)
        again, _ = cached_tokenize(texts, tokenizer, "full", cache)
        assert again.flat.tolist() == tokens.flat.tolist() and again.offsets.tolist() == tokens.offsets.tolist()
        assert cached.stat().st_size > 100, "the cache file was written again"


@pytest.mark.parametrize(
    "ids, texts, expected",
    [((1, "1"), ("a", "b"), r"id 0 \(1\) is not a string but int"), (("a", "b"), ("x", 2), r"text 1 \(2\) is not a string")],
)
def test_a_text_set_of_non_strings_is_refused_when_built(ids, texts, expected):
    with pytest.raises(TextSetError, match=expected):
        TextSet(ids, texts)


def test_scoring_no_texts_is_one_clear_error(tiny_models, tmp_path):
    import jaxmap

    with pytest.raises(TextSetError, match="no texts"):
        jaxmap.score([str(tiny_models[0])], [], out=tmp_path / "s.h5", progress=False)
    assert not (tmp_path / "s.h5").exists()


def test_a_json_error_reads_as_one_phrase(tmp_path):
    path = tmp_path / "t.jsonl"
    for line, expected in (
        ('{"text": "never closed', "Unterminated string starting at column 10"),
        ('{"text": "a\tb"}', "Invalid control character at column 12"),
        ('{"text": }', "Expecting value at column 10"),
    ):
        path.write_text(line)
        with pytest.raises(TextSetError) as error:
            load_texts(path)
        assert f"t.jsonl:1: not valid JSON ({expected})" in str(error.value)
