"""A soak of one ``jaxmap score`` job over many hub models, killed and resumed (issue 22, item 5).

A fake hub on 127.0.0.1 (``tests/fake_hub.py``, the one the tests use) serves ``--models`` tiny
random models built from every small config of the parity tests (``CASES`` of
``tests/test_parity*.py``: every registered architecture and the variants that change the
maths), each model its base's weights plus its own noise, in a random order. About
``--broken-share`` of them (at least one of each kind) are broken:

* ``truncated``: the weights file is cut to 60% of its bytes (the hub lists it so, hashes
  included), so it downloads cleanly and its safetensors header no longer fits;
* ``cut``: every download of the weights stops halfway and the connection closes;
* ``gated``: the hub answers 403 with its GatedRepo code;
* ``missing``: the hub has no such repository (404);
* ``stalled``: the server never answers a request for the weights;
* ``nan``: one layer-0 weight matrix is all NaN.

One ``jaxmap score`` job runs over the list with ``--disk-budget`` (``--budget-models`` times the
largest model's weights) and ``--delete-after``, with its own hub cache and compilation cache;
it is SIGKILLed ``--kills`` times, each time a random number of rows after the last kill plus a
random 0 to ``--kill-jitter`` seconds (so that the kill lands mid-download, -load, -compile or
-commit), and started again with the same command until it ends by itself. The driver samples
the job's resident memory (``VmRSS``) and the weight bytes in the hub cache every
``--sample-every`` seconds. It then reports, in markdown (and JSON beside it):

* rows lost (a good model without a row), duplicated (a key twice) or unexpected (a broken
  model with a row), and ``jaxmap info --verify``'s verdict: all must be none;
* every broken model named in the last job's summary (``STORE.run.json``) with a reason that
  says what is wrong with it, and any good model that failed;
* each model's seconds per phase (resolve, validate, download, wait, load, tokenize, compile,
  score, commit; jaxmap records them in each row's ``phase_seconds`` and in the run summary),
  as median, p95 and total;
* resident memory per segment and its slope per model after warm-up;
* scorer compilations against the distinct model shapes and batch shapes, and the programs
  in the persistent compilation cache;
* the disk: peak weight bytes against the budget, and what the kills left in the hub cache.

The job runs from the working tree, or with ``--jaxmap-commit COMMIT`` from that commit's
``jaxmap`` (extracted with ``git archive``; the job's working directory is the work directory,
so the checkout's own ``jaxmap`` never shadows it): a long soak should not pick up edits made
to the working tree while it runs. Needs the test extras (torch builds the base models)::

    python benchmarks/soak.py --models 1000 --kills 3 \\
        --out benchmarks/results/soak-cpu-2core-2026-12-05

``tests/test_soak.py`` runs a 40-model version with one kill.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent
# The fake hub, the tests' random-model helpers and the parity tests' configs.
sys.path.insert(0, str(REPOSITORY / "tests"))

from fake_hub import WEIGHTS, FakeHub, serve  # noqa: E402

# kind -> (what is wrong with the model, a pattern its reason in the job's summary must match)
BROKEN = {
    "truncated": ("weights file cut to 60% of its bytes, listed so by the hub",
                  r"model\.safetensors: .*truncated"),
    "cut": ("every weights download stops halfway", r"download from \S+ broke off: model\.safetensors"),
    "gated": ("the hub answers 403 GatedRepo", r"gated on the hub"),
    "missing": ("no such repository on the hub (404)", r"not found on the hub \(404\)"),
    "stalled": ("the server never answers a weights request", r"timed out after"),
    "nan": ("a layer-0 weight matrix is all NaN", r"non-finite log-likelihood"),
}
PHASES = ("resolve", "validate", "download", "wait", "load", "tokenize", "compile", "score", "commit")
# The job's lines about each model; on stderr they may follow a progress bar on one line.
SCORED_LINE = re.compile(r"(?P<ref>soak/[\w.-]+): (?P<tokens>\d+) tokens in ")
COMPILED = re.compile(r"(\d+) new compilation")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
FAILED_LINE = re.compile(r"jaxmap: (?P<ref>soak/[\w.-]+): (?:failed|cannot be scored): (?P<reason>.*)$")
MIB = 2**20


# -- the models ------------------------------------------------------------------------------------


def parity_cases() -> dict[str, tuple[str, tuple]]:
    """``module::case`` -> (architecture, case) over every parity case table
    (``tests/test_parity_coverage.py`` finds them)."""
    import importlib

    from test_parity_coverage import parity_cases as cases_by_architecture

    cases = {}
    for architecture, names in cases_by_architecture().items():
        for qualified in names:
            module, name = qualified.split("::")
            cases[qualified] = (architecture, importlib.import_module(module).CASES[name])
    return cases


def choose_bases(cases: dict[str, tuple[str, tuple]], count: int | None) -> list[str]:
    """``count`` case names (all when None), one per architecture in turn, so that a few bases
    still span the architectures."""
    names = sorted(cases)
    if count is None or count >= len(names):
        return names
    by_architecture = collections.defaultdict(list)
    for name in names:
        by_architecture[cases[name][0]].append(name)
    chosen, queues = [], [list(v) for _, v in sorted(by_architecture.items())]
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def build_bases(names: list[str], cases: dict[str, tuple[str, tuple]], directory: Path) -> dict[str, Path]:
    """Each case's random model (``tests/parity.py``'s ``save_case``) under ``directory``, kept
    between runs (seeded, so the same)."""
    from parity import save_case

    built = {}
    for seed, name in enumerate(sorted(names)):
        target = directory / _short(name)
        if not (target / WEIGHTS).is_file():
            partial = directory / f".{_short(name)}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            save_case(name, cases[name][1], partial, seed=seed)
            partial.rename(target)
        built[name] = target
    return built


def _short(case: str) -> str:
    """A case's name without its module (``test_parity_moe::mixtral-top2-of-4`` -> ``mixtral-top2-of-4``)."""
    return case.split("::")[-1]


@dataclass
class Model:
    index: int
    repo: str
    base: str
    broken: str | None = None
    commit: str | None = None

    @property
    def key(self) -> str:
        return f"{self.repo}@{self.commit}"


def plan_models(count: int, bases: list[str], broken_share: float, rng: random.Random) -> list[Model]:
    """``count`` models in a random order, cycling through the bases; ``broken_share`` of them
    (at least one of each kind) broken, kinds in turn."""
    broken_count = min(count, max(len(BROKEN), round(broken_share * count)))
    kinds = [list(BROKEN)[i % len(BROKEN)] for i in range(broken_count)] + [None] * (count - broken_count)
    rng.shuffle(kinds)
    order = [bases[i % len(bases)] for i in range(count)]
    rng.shuffle(order)
    return [
        Model(i, f"soak/m{i:04d}-{_short(base)}", base, kind) for i, (base, kind) in enumerate(zip(order, kinds))
    ]


def derive(model: Model, base: Path, tensors: dict[str, np.ndarray], target: Path, seed: int) -> None:
    """``model``'s files in ``target``: its base's config and tokenizer, and the base's weights
    plus noise of its own (broken as its kind says)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    target.mkdir(parents=True, exist_ok=True)
    for file in base.iterdir():
        if file.is_file() and file.name != WEIGHTS:
            shutil.copyfile(file, target / file.name)
    weights = {}
    for name, tensor in tensors.items():
        if np.issubdtype(tensor.dtype, np.floating):
            scale = float(tensor.std()) or 1.0
            tensor = (tensor + 0.05 * scale * rng.standard_normal(tensor.shape, np.float32)).astype(tensor.dtype)
        weights[name] = tensor
    if model.broken == "nan":
        matrices = [n for n, t in weights.items() if t.ndim == 2 and np.issubdtype(t.dtype, np.floating)]
        first_layer = [n for n in matrices if re.search(r"\.0\.", n)] or matrices
        victim = max(first_layer, key=lambda n: weights[n].size)
        weights[victim] = np.full_like(weights[victim], np.nan)
    save_file(weights, str(target / WEIGHTS), metadata={"format": "pt"})
    if model.broken == "truncated":
        size = (target / WEIGHTS).stat().st_size
        with open(target / WEIGHTS, "r+b") as handle:
            handle.truncate(int(size * 0.6))


def write_texts(path: Path) -> int:
    from conftest import TEXTS

    with open(path, "w", encoding="utf-8") as handle:
        for i, text in enumerate(TEXTS):
            handle.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
    return len(TEXTS)


# -- the job, killed and resumed --------------------------------------------------------------------


def _status_kib(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def weight_bytes(cache: Path) -> tuple[int, int]:
    """Bytes of weight blobs (LFS files: named by their sha256) and of partial downloads in the
    hub cache."""
    weights = partial = 0
    try:
        repositories = list(os.scandir(cache))
    except FileNotFoundError:
        return 0, 0
    for repository in repositories:
        try:
            blobs = list(os.scandir(os.path.join(repository.path, "blobs")))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for blob in blobs:
            try:
                size = blob.stat().st_size
            except FileNotFoundError:
                continue
            if blob.name.endswith(".incomplete"):
                partial += size
            elif len(blob.name) == 64:
                weights += size
    return weights, partial


@dataclass
class Segment:
    """One start of the job, until it was killed or ended."""

    number: int
    rows_before: int
    kill_after_rows: int | None  # cumulative rows after which it is killed (None: runs to its end)
    kill_delay: float
    seconds: float = 0.0
    returncode: int | None = None
    killed: bool = False
    first_row_after: float | None = None  # seconds from the start to its first committed row
    scored: list[tuple[float, str, int, int | None]] = field(default_factory=list)
    # (seconds, reference, scorer compilations it needed, VmRSS KiB just after its row)
    failed: list[tuple[float, str, str]] = field(default_factory=list)  # (seconds, reference, reason)
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    # (seconds, VmRSS KiB, models finished in this segment, weight bytes, partial bytes)

    def finished(self) -> int:
        return len(self.scored) + len(self.failed)


def run_segment(
    segment: Segment, command: list[str], env: dict, cwd: Path, log: Path, hub_cache: Path,
    sample_every: float, say, deadline: float,
) -> Segment:
    started = time.monotonic()
    with open(log.with_suffix(f".{segment.number}.stdout"), "w") as stdout:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        lock = threading.Lock()
        reached = threading.Event()

        def read() -> None:
            with open(log.with_suffix(f".{segment.number}.stderr"), "w") as copy:
                for line in process.stderr:
                    copy.write(line)
                    now = time.monotonic() - started
                    # The job's lines share stderr with its progress bars.
                    line = ANSI.sub("", line).split("\r")[-1].strip()
                    if match := SCORED_LINE.search(line):
                        with lock:
                            compiled = COMPILED.search(line)
                            segment.scored.append((
                                now, match["ref"], int(compiled[1]) if compiled else 0,
                                _status_kib(process.pid, "VmRSS"),
                            ))
                            if segment.first_row_after is None:
                                segment.first_row_after = now
                            rows = segment.rows_before + len(segment.scored)
                        if segment.kill_after_rows is not None and rows >= segment.kill_after_rows:
                            reached.set()
                    elif match := FAILED_LINE.search(line):
                        with lock:
                            segment.failed.append((now, match["ref"], match["reason"]))

        def sample() -> None:
            while process.poll() is None:
                rss = _status_kib(process.pid, "VmRSS")
                weights, partial = weight_bytes(hub_cache)
                if rss is not None:
                    with lock:
                        segment.samples.append((time.monotonic() - started, rss, segment.finished(), weights, partial))
                time.sleep(sample_every)

        reader = threading.Thread(target=read, daemon=True)
        sampler = threading.Thread(target=sample, daemon=True)
        reader.start()
        sampler.start()
        last_report = 0
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise TimeoutError(f"segment {segment.number} still running at the soak's deadline; killed")
            if reached.wait(0.5):
                time.sleep(segment.kill_delay)
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    segment.killed = True
                process.wait()
                break
            if segment.finished() - last_report >= 100:
                last_report = segment.finished()
                rss = segment.samples[-1][1] / 1024 if segment.samples else 0
                say(f"segment {segment.number}: {segment.rows_before + len(segment.scored)} rows, "
                    f"{len(segment.failed)} failures, RSS {rss:.0f} MiB, {time.monotonic() - started:.0f} s")
        segment.returncode = process.wait()
        reader.join(10)
        sampler.join(10)
    segment.seconds = time.monotonic() - started
    return segment


# -- the report ---------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    array = np.asarray(values, np.float64)
    return {
        "count": int(array.size), "median": float(np.median(array)), "p95": float(np.percentile(array, 95)),
        "mean": float(array.mean()), "max": float(array.max()), "total": float(array.sum()),
    }


def _steady_growth(scored: list[tuple], settle: int = 10, shortest: int = 10) -> dict:
    """Resident memory between compilations: over every run of rows in a row that compiled
    nothing, less its first ``settle`` rows (the new programs' first runs still allocate) and
    with at least ``shortest`` rows left, the KiB VmRSS grew per row (all runs pooled: a leak
    per model shows here, apart from what compiling adds); and over rows that compiled, KiB
    per program."""
    grown = rows = 0
    stretch: list[int] = []
    for _, _, compiled, rss in scored + [(0, "", 1, None)]:
        if compiled == 0 and rss is not None:
            stretch.append(rss)
            continue
        kept = stretch[settle:]
        if len(kept) >= shortest:
            grown += kept[-1] - kept[0]
            rows += len(kept) - 1
        stretch = []
    programs = sum(c for _, _, c, _ in scored)
    compiling = sum(
        b[3] - a[3] for a, b in zip(scored, scored[1:]) if b[2] and a[3] is not None and b[3] is not None
    )
    return {
        "kib_per_row_without_compiling": grown / rows if rows else None, "rows_without_compiling": rows,
        "programs": programs, "kib_per_program": compiling / programs if programs else None,
    }


def _slope(samples: list[tuple], warm_from: int) -> float | None:
    """Least-squares KiB of VmRSS per finished model over samples with at least ``warm_from``
    models finished (None when fewer than 10 such models or samples)."""
    kept = [(s[2], s[1]) for s in samples if s[2] >= warm_from]
    if len(kept) < 10 or kept[-1][0] - kept[0][0] < 10:
        return None
    finished, rss = np.array(kept, np.float64).T
    return float(np.polyfit(finished, rss, 1)[0])


def analyse(settings: dict, models: list[Model], segments: list[Segment], work: Path, budget: int) -> dict:
    from jaxmap.store import journal_directory, open_store, verify_rows

    store_path = work / "store.h5"
    store = open_store(store_path)
    keys = store.model_keys
    counts = collections.Counter(keys)
    good = [m for m in models if m.broken is None]
    expected = {m.key for m in good}
    by_key = {m.key: m for m in models}
    jobs = json.loads(store_path.with_name(store_path.name + ".run.json").read_text())["jobs"]
    last = jobs[-1]
    failures = {o["reference"]: o["reason"] for o in last["models"] if o["status"] == "failed"}
    broken = []
    for m in models:
        if m.broken is None:
            continue
        reason = failures.get(m.repo)
        broken.append({
            "model": m.repo, "kind": m.broken, "named": reason is not None, "reason": reason,
            "reason_matches": bool(reason and re.search(BROKEN[m.broken][1], reason)),
        })
    good_failed = {m.repo: failures[m.repo] for m in good if m.repo in failures}

    phases = {name: [] for name in PHASES}
    compilations = compile_seconds = 0
    shapes: dict[str, int] = {}
    for meta in store.model_meta:
        for name, seconds in (meta.get("phase_seconds") or {}).items():
            phases.setdefault(name, []).append(seconds)
        compilations += meta.get("compilations", 0)
        compile_seconds += meta.get("compile_seconds", 0.0)
        base = by_key[meta["key"]].base if meta.get("key") in by_key else meta.get("architecture")
        shapes[base] = max(shapes.get(base, 0), meta.get("batch_shapes", 0))
    commits = [o["phases"]["commit"] for o in last["models"] if o["status"] == "scored" and "commit" in o.get("phases", {})]
    phases["commit"] = commits
    last_validation = [o.get("phases", {}) for o in last["models"]]
    resume = {
        "models": len(last_validation),
        "resolve_seconds": sum(p.get("resolve", 0.0) for p in last_validation),
        "validate_seconds": sum(p.get("validate", 0.0) for p in last_validation),
    }
    xla = work / "xla"
    programs = [p for p in xla.iterdir() if not p.name.endswith("-atime")] if xla.is_dir() else []

    memory = []
    for s in segments:
        if not s.samples:
            continue
        finished = s.finished()
        warm = max(finished // 2, 1)
        slope = _slope(s.samples, warm)
        rss = [x[1] for x in s.samples]
        after_first = [x[1] for x in s.samples if x[2] >= 1] or rss
        memory.append({
            "segment": s.number, "models": finished, "rss_first_model_mib": after_first[0] / 1024,
            "rss_max_mib": max(rss) / 1024, "rss_end_mib": rss[-1] / 1024,
            "slope_kib_per_model": slope, "slope_from_model": warm, **_steady_growth(s.scored),
        })
    weight_peak = max((x[3] for s in segments for x in s.samples), default=0)
    left_weights, left_partial = weight_bytes(work / "hub-cache")

    walls = sum(s.seconds for s in segments)
    return {
        "settings": settings,
        "models": {"total": len(models), "good": len(good), "broken": len(models) - len(good),
                   "bases": len({m.base for m in models}), "broken_kinds": dict(collections.Counter(m.broken for m in models if m.broken))},
        "rows": {
            "store": len(keys), "expected": len(expected),
            "lost": sorted(expected - set(keys)), "duplicated": {k: c for k, c in counts.items() if c > 1},
            "unexpected": sorted(set(keys) - expected),
            "verify_problems": [list(p) for p in verify_rows(store_path)],
            "journal_rows_left": len(list(journal_directory(store_path).glob("*.row"))) if journal_directory(store_path).is_dir() else 0,
        },
        "failures": {"broken": broken, "good_models_failed": good_failed, "named_in_last_summary": len(failures)},
        "last_job": dict(collections.Counter(o["status"] for o in last["models"])),
        "phases": {name: _stats(values) for name, values in phases.items()},
        "resume": resume,
        "segments": [
            {"segment": s.number, "seconds": s.seconds, "killed": s.killed, "returncode": s.returncode,
             "rows_before": s.rows_before, "rows_committed": len(s.scored), "failed": len(s.failed),
             "kill_after_rows": s.kill_after_rows, "kill_delay": s.kill_delay, "first_row_after": s.first_row_after,
             "weights_at_start": s.samples[0][3] if s.samples else None,
             "weights_peak": max((x[3] for x in s.samples), default=None),
             "partial_peak": max((x[4] for x in s.samples), default=None)}
            for s in segments
        ],
        "memory": memory,
        "compile": {
            "distinct_model_shapes": len(shapes), "batch_shapes_per_model_shape": shapes,
            "scorer_programs_needed": sum(shapes.values()), "scorer_compilations": compilations,
            "compile_seconds": compile_seconds, "programs_in_persistent_cache": len(programs),
            "last_job": last.get("compile_cache"),
        },
        "disk": {"budget": budget, "weight_bytes_peak": weight_peak, "weights_left": left_weights,
                 "partial_left": left_partial},
        "wall_seconds": walls,
        "jobs_recorded": len(jobs),
    }


def verdict(result: dict) -> list[str]:
    """What failed the soak's requirements (empty when nothing did)."""
    problems = []
    rows = result["rows"]
    for name in ("lost", "duplicated", "unexpected", "verify_problems"):
        if rows[name]:
            problems.append(f"rows {name}: {rows[name] if len(rows[name]) < 10 else len(rows[name])}")
    unnamed = [b["model"] for b in result["failures"]["broken"] if not b["named"]]
    if unnamed:
        problems.append(f"broken models not named in the summary: {unnamed}")
    wrong = [f"{b['model']} ({b['kind']}): {b['reason']}" for b in result["failures"]["broken"] if b["named"] and not b["reason_matches"]]
    if wrong:
        problems.append(f"reasons that do not say what is wrong: {wrong}")
    if result["failures"]["good_models_failed"]:
        problems.append(f"good models failed: {result['failures']['good_models_failed']}")
    return problems


def _mb(count: int | None) -> float | None:
    return None if count is None else count / 1e6


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(result: dict, command: str) -> str:
    s, rows, compile_ = result["settings"], result["rows"], result["compile"]
    problems = verdict(result)
    out = [
        f"# Soak: {s['models']} hub models, {s['kills']} SIGKILLs, {s['machine']}, {s['date']}",
        "",
        "```bash",
        command,
        "```",
        "",
        f"jaxmap from {s['jaxmap_source']}; {s['cpu']}; load average {s['load_start']} at the start, "
        f"{s['load_end']} at the end. {result['models']['bases']} base models (the parity tests' "
        f"cases) of {s['architectures']} of the {s['architectures_registered']} registered architectures, "
        f"{s['texts']} texts, disk budget {result['disk']['budget'] / 1e6:.2f} MB "
        f"({s['budget_models']}× the largest model), hub timeout {s['hub_timeout']} s with "
        f"{s['hub_retries']} retries. Wall time {result['wall_seconds'] / 60:.1f} min over "
        f"{len(result['segments'])} starts.",
        "",
        "## Verdict",
        "",
        *(["**All requirements held**: no row lost, duplicated or unexpected, every checksum "
           "verified, every broken model named with its reason, no good model failed."] if not problems
          else [f"- **{p}**" for p in problems]),
        "",
        "## Rows",
        "",
        "| expected | in the store | lost | duplicated | unexpected | damaged | journal rows left |",
        "|---|---|---|---|---|---|---|",
        f"| {rows['expected']} | {rows['store']} | {len(rows['lost'])} | {len(rows['duplicated'])} | "
        f"{len(rows['unexpected'])} | {len(rows['verify_problems'])} | {rows['journal_rows_left']} |",
        "",
        "## Starts and kills",
        "",
        "| start | seconds | rows committed | failures | killed after row | + delay s | exit | first row after s "
        "| hub-cache weights at start / peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seg in result["segments"]:
        out.append(
            f"| {seg['segment']} | {seg['seconds']:.0f} | {seg['rows_committed']} | {seg['failed']} | "
            f"{seg['kill_after_rows'] if seg['killed'] else '–'} | {_fmt(seg['kill_delay'], 2) if seg['killed'] else '–'} | "
            f"{'SIGKILL' if seg['killed'] else seg['returncode']} | {_fmt(seg['first_row_after'], 1)} | "
            f"{_fmt(_mb(seg['weights_at_start']), 2)} / {_fmt(_mb(seg['weights_peak']), 2)} |"
        )
    out += [
        "",
        f"The last start validated all {result['resume']['models']} models again before scoring: "
        f"{result['resume']['resolve_seconds']:.1f} s resolving and {result['resume']['validate_seconds']:.1f} s "
        "validating (already committed models included).",
        "",
        "## Seconds per model, by phase",
        "",
        "Scored models, from each row's `phase_seconds` (every start); commit from the last start's "
        "run summary. `download` runs in the background and `wait` is what the scoring loop waited "
        "for the download and the load; `load` runs in the background too.",
        "",
        "| phase | models | median | p95 | mean | max | total s |",
        "|---|---|---|---|---|---|---|",
    ]
    phases = result["phases"]
    for name in PHASES:
        st = phases.get(name, {"count": 0})
        if st["count"]:
            out.append(f"| {name} | {st['count']} | {st['median']:.4f} | {st['p95']:.4f} | {st['mean']:.4f} | "
                       f"{st['max']:.3f} | {st['total']:.1f} |")
    foreground = {n: phases[n]["total"] for n in ("resolve", "validate", "wait", "tokenize", "compile", "score", "commit") if phases.get(n, {}).get("count")}
    if foreground:
        top = max(foreground, key=foreground.get)
        out += ["", f"Of the phases the job waits for, **{top}** takes the most in total "
                f"({foreground[top]:.1f} s of {sum(foreground.values()):.1f} s)."]
    out += [
        "",
        "## Resident memory",
        "",
        "VmRSS of the job, sampled every few tenths of a second and read again after each row. "
        "*Slope*: least squares against models finished, over the second half of the start. "
        "*Between compilations*: pooled over every run of rows in a row that compiled nothing, "
        "less its first 10 (the new programs' first runs still allocate), 10 or more left (a leak "
        "per model shows there); *per program*: across the rows that compiled.",
        "",
        "| start | models | after the first model MiB | max MiB | at the end MiB | slope KiB/model (from model) "
        "| KiB/row between compilations (rows) | KiB per program compiled (programs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in result["memory"]:
        out.append(f"| {m['segment']} | {m['models']} | {m['rss_first_model_mib']:.0f} | {m['rss_max_mib']:.0f} | "
                   f"{m['rss_end_mib']:.0f} | {_fmt(m['slope_kib_per_model'], 1)} ({m['slope_from_model']}) | "
                   f"{_fmt(m['kib_per_row_without_compiling'], 1)} ({m['rows_without_compiling']}) | "
                   f"{_fmt(m['kib_per_program'], 0)} ({m['programs']}) |")
    out += [
        "",
        "## Compilations",
        "",
        f"{compile_['distinct_model_shapes']} distinct model shapes among the scored models need "
        f"{compile_['scorer_programs_needed']} scorer programs (one per batch shape of each); the rows record "
        f"{compile_['scorer_compilations']} scorer compilations over all starts "
        f"({compile_['compile_seconds']:.1f} s; each start compiles or loads again what it needs), and the "
        f"persistent compilation cache holds {compile_['programs_in_persistent_cache']} programs. "
        f"The last start: {compile_['last_job']}.",
        "",
        "## Disk",
        "",
        f"Peak weight bytes in the hub cache {result['disk']['weight_bytes_peak'] / 1e6:.2f} MB against a budget of "
        f"{result['disk']['budget'] / 1e6:.2f} MB; left at the end: {result['disk']['weights_left'] / 1e6:.2f} MB of "
        f"weights and {result['disk']['partial_left'] / 1e6:.2f} MB of partial downloads.",
        "",
        "## Broken models",
        "",
        "| model | kind | reason in the summary |",
        "|---|---|---|",
    ]
    for b in result["failures"]["broken"]:
        reason = (b["reason"] or "**not named**").replace("|", "\\|")
        out.append(f"| {b['model']} | {b['kind']} | {reason}{'' if b['reason_matches'] or not b['named'] else ' **(does not say so)**'} |")
    return "\n".join(out) + "\n"


# -- driver -----------------------------------------------------------------------------------------------


def _cpu_model_name() -> str:
    sys.path.insert(0, str(REPOSITORY / "benchmarks"))
    from throughput_workload import cpu_model

    return cpu_model()


def extract_jaxmap(commit: str, into: Path) -> Path:
    """jaxmap as of ``commit`` (with its kernels) under ``into``."""
    sys.path.insert(0, str(REPOSITORY / "benchmarks"))
    from bench_loading import _extract

    return _extract(commit, into)


def run(
    models: int = 1000, kills: int = 3, seed: int = 0, work: Path | None = None, bases: int | None = None,
    broken_share: float = 0.05, budget_models: float = 2.0, hub_timeout: float = 2.0, hub_retries: int = 1,
    kill_jitter: float = 3.0, sample_every: float = 0.5, jaxmap_commit: str | None = None,
    time_limit: float = 3 * 3600, say=print,
) -> dict:
    """Run the soak (see the module docstring); returns the analysis (see :func:`analyse`)."""
    import transformers

    transformers.logging.set_verbosity_error()  # the random configs' warnings, once per base
    transformers.utils.logging.disable_progress_bar()
    rng = random.Random(seed)
    work = Path(work or tempfile.mkdtemp(prefix="jaxmap-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    source = None
    if jaxmap_commit:
        source = extract_jaxmap(jaxmap_commit, Path(tempfile.mkdtemp(prefix="jaxmap-src-", dir=work)))
        sys.path.insert(0, str(source))
    cases = parity_cases()
    chosen = choose_bases(cases, bases)
    started = time.monotonic()
    built = build_bases(chosen, cases, work / "bases")
    say(f"{len(built)} base models in {time.monotonic() - started:.0f} s")

    planned = plan_models(models, chosen, broken_share, rng)
    from safetensors.numpy import load_file

    base_tensors = {name: load_file(str(path / WEIGHTS)) for name, path in built.items()}
    model_root = work / "models"
    shutil.rmtree(model_root, ignore_errors=True)
    hub = FakeHub()
    hub.stall_seconds = hub_timeout * (hub_retries + 2) + 5
    for m in planned:
        directory = model_root / m.repo.split("/")[1]
        derive(m, built[m.base], base_tensors[m.base], directory, seed * 100_003 + m.index)
        if m.broken == "missing":
            m.commit = "0" * 40
            continue
        m.commit = hub.add(m.repo, directory, in_memory=False)
        repo = m.repo.lower()
        if m.broken == "gated":
            hub.broken[(repo, "api")] = "gated"
        elif m.broken == "stalled":
            hub.broken[(repo, WEIGHTS)] = "stall"
        elif m.broken == "cut":
            hub.broken[(repo, WEIGHTS)] = "cut"
    largest = max((model_root / m.repo.split("/")[1] / WEIGHTS).stat().st_size for m in planned)
    budget = int(budget_models * largest)
    (work / "models.txt").write_text("".join(m.repo + "\n" for m in planned))
    texts = write_texts(work / "texts.jsonl")
    say(f"{len(planned)} models ({sum(m.broken is not None for m in planned)} broken) ready in "
        f"{time.monotonic() - started:.0f} s")

    for stale in ("store.h5", "hub-cache", "xla", "hf-home"):
        target = work / stale
        if target.is_dir():
            shutil.rmtree(target)
        for companion in work.glob(stale + "*"):
            shutil.rmtree(companion) if companion.is_dir() else companion.unlink()
    server, url = serve(hub)
    env = {
        **os.environ, "HF_ENDPOINT": url, "HF_HUB_CACHE": str(work / "hub-cache"), "HF_HOME": str(work / "hf-home"),
        "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "JAXMAP_HUB_TIMEOUT": str(hub_timeout),
        "JAXMAP_HUB_RETRIES": str(hub_retries), "TQDM_DISABLE": "1", "JAX_PLATFORMS": "cpu",
        "JAXMAP_CACHE": str(work / "jaxmap-cache"),
    }
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "jaxmap", "score", "models.txt", "--texts", "texts.jsonl", "--out", "store.h5",
        "--disk-budget", str(budget), "--delete-after", "--compile-cache", str(work / "xla"),
    ]
    good = sum(m.broken is None for m in planned)
    low, high = max(1, good // 20), max(2, good - good // 20)
    points = sorted(rng.sample(range(low, high), min(kills, high - low))) if kills else []
    segments: list[Segment] = []
    load_start = os.getloadavg()
    deadline = time.monotonic() + time_limit
    try:
        rows = 0
        for number in range(len(points) + 1):
            target = points[number] if number < len(points) else None
            if target is not None and target <= rows:
                target = rows + 1
            segment = Segment(number + 1, rows, target, round(rng.uniform(0, kill_jitter), 2))
            say(f"start {segment.number}" + (f": SIGKILL after row {target} + {segment.kill_delay} s" if target else ": to the end"))
            run_segment(segment, command, env, work, work / "job.log", work / "hub-cache", sample_every, say, deadline)
            rows += len(segment.scored)
            segments.append(segment)
            say(f"start {segment.number}: {'killed' if segment.killed else f'exit {segment.returncode}'} after "
                f"{segment.seconds:.0f} s, {len(segment.scored)} rows, {len(segment.failed)} failures")
            if not segment.killed and number < len(points):
                say("the job ended before its kill; no more kills")
                break
    finally:
        server.shutdown()
        server.server_close()
    settings = {
        "models": models, "kills": kills, "seed": seed, "bases": len(chosen), "broken_share": broken_share,
        "budget_models": budget_models, "hub_timeout": hub_timeout, "hub_retries": hub_retries,
        "kill_jitter": kill_jitter, "texts": texts, "work": str(work),
        "architectures": len({cases[name][0] for name in chosen}), "architectures_registered": _registered(),
        "jaxmap_source": f"commit {jaxmap_commit}" if jaxmap_commit else f"the working tree ({_git('rev-parse', '--short', 'HEAD')}{', with uncommitted changes' if _git('status', '--porcelain', '--untracked-files=no') else ''})",
        "machine": f"cpu-{os.cpu_count()}core", "cpu": _cpu_model_name(), "date": datetime.date.today().isoformat(),
        "load_start": " ".join(f"{x:.2f}" for x in load_start), "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    result = analyse(settings, planned, segments, work, budget)
    result["samples"] = {s.number: s.samples[:: max(1, len(s.samples) // 400)] for s in segments}
    # Per row: (seconds into its start, scorer compilations, VmRSS KiB).
    result["rows_rss"] = {s.number: [(round(t, 2), c, rss) for t, _, c, rss in s.scored] for s in segments}
    return result


def _registered() -> int:
    from jaxmap.models import ARCHITECTURES

    return len(ARCHITECTURES)


def _git(*arguments: str) -> str:
    done = subprocess.run(["git", "-C", str(REPOSITORY), *arguments], capture_output=True, text=True)
    return done.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000, help="models in the list (default: %(default)s)")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs before the job may end (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bases", type=int, help="base models (distinct shapes; default: every parity config)")
    parser.add_argument("--broken-share", type=float, default=0.05, help="share of broken models (default: %(default)s)")
    parser.add_argument("--budget-models", type=float, default=2.0,
                        help="--disk-budget as a multiple of the largest model's weights (default: %(default)s)")
    parser.add_argument("--hub-timeout", type=float, default=2.0, help="JAXMAP_HUB_TIMEOUT (default: %(default)s)")
    parser.add_argument("--hub-retries", type=int, default=1, help="JAXMAP_HUB_RETRIES (default: %(default)s)")
    parser.add_argument("--kill-jitter", type=float, default=3.0, help="seconds of random delay after a kill's row")
    parser.add_argument("--sample-every", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--jaxmap-commit", help="run the job with jaxmap as of this commit")
    parser.add_argument("--work", type=Path, help="work directory (default: a new temporary one; kept)")
    parser.add_argument("--time-limit", type=float, default=3 * 3600, help="seconds before the soak gives up")
    parser.add_argument("--out", type=Path, help="write OUT.md and OUT.json (default: print the markdown)")
    args = parser.parse_args()
    command = "python benchmarks/soak.py " + " ".join(sys.argv[1:])
    result = run(
        models=args.models, kills=args.kills, seed=args.seed, work=args.work, bases=args.bases,
        broken_share=args.broken_share, budget_models=args.budget_models, hub_timeout=args.hub_timeout,
        hub_retries=args.hub_retries, kill_jitter=args.kill_jitter, sample_every=args.sample_every,
        jaxmap_commit=args.jaxmap_commit, time_limit=args.time_limit,
        say=lambda line: print(f"[soak] {line}", file=sys.stderr, flush=True),
    )
    text = markdown(result, command)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    else:
        print(text)
    return 1 if verdict(result) else 0


if __name__ == "__main__":
    sys.exit(main())
