"""Peak memory while loading a model, against its size in the target dtype.

Each measurement runs in a fresh Python process, which imports jax and jaxmap, starts the
backend, resolves the model (the GGUF conversion of a packaged model happens before, in the
parent) and then resets the kernel's high-water mark (``/proc/self/clear_refs``) so that
``VmHWM`` is the peak resident memory of ``load_model`` alone. Reported per run:

* ``peak_rss``: VmHWM during the load, less the resident memory just before it. It includes
  the pages of the memory-mapped safetensors file that were read (file-backed, reclaimable).
* ``peak_anon``: the peak of RssAnon (arrays and other private memory) less its value before
  the load, sampled every millisecond by a thread (a spike shorter than that can be missed).
* ``model_bytes``: the params' total size in the target dtype (vocabulary padding included);
  ``per_device_bytes``: what each device holds of them.
* device memory: ``device.memory_stats()["peak_bytes_in_use"]`` where the backend reports it
  (GPU, TPU). The CPU backend reports nothing; there device buffers are host memory and show
  in the RSS figures.

``--baseline COMMIT`` measures the loader of an earlier commit (extracted with ``git archive``)
the same way, for before/after figures.

    python benchmarks/bench_loading.py --model smollm2-135m-instruct \\
        --meshes data=1,model=3 data=1,model=4 --baseline 8b68d68 \\
        --out benchmarks/results/loading-cpu-2core-2026-11-22
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
MIB = 2**20


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class _AnonSampler(threading.Thread):
    """Highest RssAnon seen while running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _status("RssAnon")
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, _status("RssAnon"))
            time.sleep(0.001)

    def stop(self) -> int:
        self.running = False
        self.join()
        return max(self.peak, _status("RssAnon"))


def measure(model: str, dtype: str, mesh: str | None, devices: int) -> dict:
    """Load one model in this (fresh) process and report its memory figures."""
    import jax

    if devices > 1:
        jax.config.update("jax_num_cpu_devices", devices)
    import numpy as np

    import jaxmap
    from jaxmap.checkpoints import resolve
    from jaxmap.engine import load_model

    jax.devices()
    checkpoint = resolve(model, progress=False)
    options = {"mesh": mesh} if mesh else {}
    rss_before, anon_before = _status("VmRSS"), _status("RssAnon")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS
    sampler = _AnonSampler()
    sampler.start()
    started = time.perf_counter()
    loaded = load_model(checkpoint, dtype, **options)
    seconds = time.perf_counter() - started
    peak_anon = sampler.stop()
    peak_rss = _status("VmHWM")
    leaves = jax.tree.leaves(loaded.params)
    per_device: dict[str, int] = {}
    for leaf in leaves:
        for shard in leaf.addressable_shards:
            key = str(shard.device)
            per_device[key] = per_device.get(key, 0) + shard.data.nbytes
    stats = {str(d): d.memory_stats() for d in jax.local_devices()}
    return {
        "model": model,
        "dtype": dtype,
        "mesh": mesh or "default",
        "devices": devices,
        "jaxmap_source": str(Path(jaxmap.__file__).parent),
        "load_seconds": seconds,
        "model_bytes": int(sum(leaf.nbytes for leaf in leaves)),
        "per_device_bytes": per_device,
        "rss_before": rss_before,
        "anon_before": anon_before,
        "peak_rss": peak_rss - rss_before,
        "peak_anon": peak_anon - anon_before,
        "rss_after": _status("VmRSS") - rss_before,
        "device_peak_bytes": {
            name: (s or {}).get("peak_bytes_in_use") for name, s in stats.items()
        },
        "device_memory_stats_available": any(stats.values()),
        "numpy": np.__version__,
        "jax": jax.__version__,
    }


def _run_child(model: str, dtype: str, mesh: str | None, devices: int, source: Path | None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--child", model, dtype, mesh or "", str(devices)]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _extract(commit: str, into: Path) -> Path:
    """jaxmap as of ``commit``, laid out so that ``import jaxmap.kernels`` finds its kernels."""
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", commit, "jaxmap", "kernels"],
        check=True, capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    shutil.move(str(into / "kernels"), str(into / "jaxmap" / "kernels"))
    return into


def _markdown(report: dict) -> str:
    lines = [
        f"# Loading memory, {report['machine']}, {report['date']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Model `{report['model']}`; jax {report['jax']}. Figures in MiB, each from a fresh "
        "process; peaks are above the process's memory just before `load_model` (imports, "
        "backend and resolved checkpoint already there). `peak RSS` includes the touched pages "
        "of the memory-mapped safetensors file; `peak anon` is private memory (arrays) sampled "
        "every millisecond. `model` is the params' size in the target dtype; `per device` what "
        "each device holds.",
        "",
        "| loader | dtype | mesh | model | per device | peak RSS | peak anon | anon / model "
        "| RSS after | device peak | load s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        per_device = sorted(set(run["per_device_bytes"].values()))
        device_peaks = [v for v in run["device_peak_bytes"].values() if v is not None]
        device_peak = f"{max(device_peaks) / MIB:.0f}" if device_peaks else "n/a (CPU)"
        lines.append(
            f"| {run['loader']} | {run['dtype']} | {run['mesh']} | {run['model_bytes'] / MIB:.0f} "
            f"| {' / '.join(f'{b / MIB:.0f}' for b in per_device)} × {len(run['per_device_bytes'])} "
            f"| {run['peak_rss'] / MIB:.0f} | {run['peak_anon'] / MIB:.0f} "
            f"| {run['peak_anon'] / run['model_bytes']:.2f} | {run['rss_after'] / MIB:.0f} "
            f"| {device_peak} | {run['load_seconds']:.2f} |"
        )
    for note in report["notes"]:
        lines += ["", note]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument(
        "--meshes", nargs="*", default=[], metavar="SPEC",
        help="also load on these meshes (data=D,model=M), each on D*M virtual CPU devices",
    )
    parser.add_argument("--baseline", help="also measure the loader of this git commit")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    parser.add_argument("--machine", default=f"cpu-{os.cpu_count()}core")
    args = parser.parse_args()

    # Convert and cache the packaged model once, so no child measures the conversion.
    from jaxmap.checkpoints import resolve

    resolve(args.model, progress=False)
    from jaxmap.sharding import parse_mesh

    configurations = [(dtype, None, 1) for dtype in args.dtypes]
    for spec in args.meshes:
        sizes = parse_mesh(spec)
        devices = sizes.get("data", 1) * sizes.get("model", 1)
        configurations += [(dtype, spec, devices) for dtype in args.dtypes]
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        loaders = [("current", None)]
        if args.baseline:
            loaders.insert(0, (f"before ({args.baseline})", _extract(args.baseline, Path(scratch))))
        for label, source in loaders:
            for dtype, mesh, devices in configurations:
                if mesh and source is not None:
                    continue  # the earlier loader has no mesh
                run = _run_child(args.model, dtype, mesh, devices, source)
                run["loader"] = label
                runs.append(run)
                print(
                    f"{label} {dtype} {run['mesh']}: model {run['model_bytes'] / MIB:.0f} MiB, "
                    f"peak RSS +{run['peak_rss'] / MIB:.0f} MiB, peak anon "
                    f"+{run['peak_anon'] / MIB:.0f} MiB, {run['load_seconds']:.2f} s",
                    flush=True,
                )
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, REPOSITORY), *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "machine": args.machine,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "model": args.model,
        "jax": runs[0]["jax"],
        "commit": subprocess.run(
            ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True,
        ).stdout.strip(),
        "runs": runs,
        "notes": [
            "The CPU backend has no `memory_stats()`: device buffers are host memory, so the "
            "RSS figures are the device figures too. On CPU, `jax.device_put` of an aligned "
            "numpy array may keep the array as the device buffer instead of copying it.",
        ],
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(_markdown(report))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, model, dtype, mesh, devices = sys.argv
        print(json.dumps(measure(model, dtype, mesh or None, int(devices))))
    else:
        main()
