"""Where a model's time goes outside scoring (issue 27): the run summary's per-model
``overhead`` breakdown, the load timing it reads, a tokenizer file damaged between two
validations, and the benchmarks' reading of the CPU's matrix features."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxmap.jobs import OVERHEAD_PARTS, score_job

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_run_summary_breaks_each_models_time_down(tiny_models, text_file, tmp_path):
    out = tmp_path / "s.h5"
    summary = score_job([str(m) for m in tiny_models[:2]], text_file, out, progress=False, batch_tokens=128)
    assert [o.status for o in summary.outcomes] == ["scored", "scored"]
    record = json.loads((tmp_path / "s.h5.run.json").read_text())["jobs"][-1]
    models = record["models"]
    walls = 0.0
    for position, model in enumerate(models):
        overhead = model["overhead"]
        parts = overhead["parts"]
        assert list(parts) == [*OVERHEAD_PARTS, "other"]
        assert all(seconds >= 0.0 for seconds in parts.values()), parts
        # The parts are disjoint pieces of the model's wall time.
        assert sum(parts.values()) <= overhead["wall"] + 1e-3
        assert parts["score"] == pytest.approx(model["seconds"])
        assert overhead["outside_scoring"] == pytest.approx(overhead["wall"] - parts["score"])
        load = overhead["load_detail"]
        assert load["seconds"] > 0 and load["read"] > 0 and load["layout"] >= 0 and load["place"] >= 0
        assert load["read"] + load["layout"] <= load["seconds"] + 1e-6
        assert overhead["token_cache"] in ("hit", "miss")
        compiled = overhead["compile_detail"]
        assert compiled["hit"] in ("memory", "disk", "partial", "miss")
        walls += overhead["wall"]
    # The first model tokenized the texts and compiled its scorers; the second, of the same
    # shape and tokenizer, reused both.
    assert models[0]["overhead"]["token_cache"] == "miss"
    assert models[0]["overhead"]["compile_detail"]["new_programs"] > 0 or models[0]["phases"]["compile"] == 0
    assert models[1]["overhead"]["token_cache"] == "hit"
    # With a compilation cache directory (the default outside the suite's own settings) the
    # detail also counts the programs loaded from it and compiled: none, for a hit in memory.
    detail = models[1]["overhead"]["compile_detail"]
    assert {key: detail[key] for key in ("new_programs", "hit")} == {"new_programs": 0, "hit": "memory"}
    assert detail.get("compiled", 0) == 0 and detail.get("loaded", 0) == 0
    assert record["outside_models_seconds"] >= 0.0
    assert sum("s outside scoring" in line for line in summary.lines()) == 2
    assert walls <= record["seconds"] + 1e-3
    # The rows keep the phases, the new "plan" among them.
    meta = json.loads(json.dumps(__import__("jaxmap").open_store(out).model_meta[0]))
    assert "plan" in meta["phase_seconds"]


def test_a_load_records_its_read_and_layout_seconds(tiny_models):
    from jaxmap.checkpoints import resolve
    from jaxmap.checkpoints.translated import translated_config

    checkpoint = resolve(str(tiny_models[0]))
    architecture, config = translated_config(checkpoint)
    checkpoint.load_params(architecture, config, "float32")
    timing = checkpoint.load_timing()
    assert set(timing) == {"read", "layout"} and timing["read"] > 0 and timing["layout"] >= 0
    assert checkpoint.load_timing() == {}  # taken once


def test_a_tokenizer_file_damaged_after_a_check_is_still_refused(tiny_models, tmp_path):
    import shutil

    from jaxmap.checkpoints import resolve, validate
    from jaxmap.errors import CheckpointError

    model = tmp_path / "m"
    shutil.copytree(tiny_models[0], model)
    validate(resolve(str(model)))
    validate(resolve(str(model)))
    tokenizer = model / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text()[:-20])
    with pytest.raises(CheckpointError, match="tokenizer.json is not valid JSON"):
        validate(resolve(str(model)))


SAMPLE_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8
vmx flags\t: vnmi preemption_timer
bugs\t\t: spectre_v1

processor\t: 1
model name\t: something else
flags\t\t: fpu
"""


def test_the_cpu_matrix_features_are_read_from_cpuinfo():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from throughput_workload import cpu_matrix_features, describe_matrix_features
    finally:
        sys.path.remove(str(BENCHMARKS))
    features = cpu_matrix_features(SAMPLE_CPUINFO)
    assert features["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert features["amx"] is True and features["avx512_bf16"] is True
    assert features["flags"] == {
        "amx_tile": True, "amx_bf16": True, "amx_int8": True, "avx512_bf16": True,
        "avx512_vnni": True, "avx512f": True, "avx2": True, "fma": True,
    }
    line = describe_matrix_features(features)
    assert line.startswith("Intel(R) Xeon(R) Platinum 8480+: AMX yes, AVX-512 BF16 yes")

    amd = cpu_matrix_features("model name\t: AMD EPYC\nflags\t\t: avx2 fma avx512f avx512_bf16\n")
    assert amd["amx"] is False and amd["avx512_bf16"] is True and amd["flags"]["amx_tile"] is False
    assert "AMX no" in describe_matrix_features(amd)

    unknown = cpu_matrix_features("")
    assert unknown["amx"] is None and unknown["flags"]["avx2"] is None
    assert "AMX unknown" in describe_matrix_features(unknown)


def _xla_cpu_flags_module():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import xla_cpu_flags
    finally:
        sys.path.remove(str(BENCHMARKS))
    return xla_cpu_flags


def test_the_xla_options_survey_refuses_a_flag_by_xlas_own_message(tmp_path, monkeypatch):
    survey = _xla_cpu_flags_module()
    monkeypatch.setitem(survey.SETTINGS, "no-such-flag", "--xla_cpu_no_such_flag_here=true")
    result = survey.run_child("no-such-flag", "float32", tmp_path, tmp_path / "t.jsonl", 1, tmp_path)
    assert set(result) == {"refused"}
    assert "xla_cpu_no_such_flag_here" in result["refused"]
    # A process that fails for another reason is not a refused flag.
    result = survey.run_child("default", "float32", tmp_path, tmp_path / "t.jsonl", 1, tmp_path)
    assert set(result) == {"failed"}
    assert "t.jsonl: no such text file" in result["failed"]


def test_the_xla_options_survey_compares_each_setting_with_the_default():
    survey = _xla_cpu_flags_module()
    matmul = {"matmul": "q/o", "shape": [2048, 576, 576]}

    def measured(seconds, loglik, rate):
        return {"scoring_seconds": seconds, "tokens_per_second": 1000 / seconds,
                "loglik": loglik, "matmuls": [{**matmul, "gflops_per_second": rate}],
                "dot_libraries": {"YNNPACK": 3, "XLA": 1}}

    default = survey._best_of_rounds([measured(2.0, [-1.0, -2.0], 100.0), measured(2.5, [-1.0, -2.0], 120.0)])
    # The fastest round's scoring, each matmul's best rate over the rounds, every round kept.
    assert default["scoring_seconds"] == 2.0 and default["matmuls"][0]["gflops_per_second"] == 120.0
    assert default["rounds_tokens_per_second"] == [500.0, 400.0]
    faster = survey._best_of_rounds([measured(1.0, [-1.0, -2.5], 90.0)])
    report = {
        "date": "2026-12-06", "tag": "", "command": "python benchmarks/xla_cpu_flags.py",
        "machine": {
            "name": "cpu-2core", "cpu_model": "AMD EPYC", "cpu_count": 2, "xla_flags": None,
            "versions": {"jax": "0", "jaxlib": "0", "torch": "0"},
            "cpu_matrix_features": {"model": "AMD EPYC", "flags": {"avx2": True}, "amx": False,
                                    "avx512_bf16": False},
        },
        "model": "m", "texts": 2, "texts_source": "s", "rounds": 2, "repeats": 1,
        "results": {"float32": {"default": default, "onednn": faster,
                                "xnnpack": {"refused": "Unknown flag in XLA_FLAGS"},
                                "ynn-dot-fusion": {"failed": "Killed"}}},
        "torch_matmuls": {"float32": {"q/o": 150.0}},
    }
    rows = {line.split(" | ")[0].lstrip("| "): line for line in survey.markdown(report).splitlines()
            if line.startswith("| ")}
    assert "| XLA 1, YNNPACK 3 | 1000 | 1000 | 2.00× | 5.0e-01 | 90 |" in rows["onednn"]
    assert "| 500 | 500, 400 | 1.00× | 0.0e+00 | 120 |" in rows["default"]
    assert "refused: Unknown flag in XLA_FLAGS" in rows["xnnpack"]
    assert "failed: Killed" in rows["ynn-dot-fusion"]
    assert rows["torch `Linear`"].endswith("| 150 |")
    # Every row of a table has the header's number of cells.
    cells = {name: line.count("|") for name, line in rows.items() if name != "setting"}
    assert len(set(cells.values())) == 1, cells


# The shape of jaxlib's optimised HLO text: fused computations first, then the entry, whose
# fusions name their library in the backend config.
SAMPLE_HLO = """HloModule jit_scorer

%fused_computation (param_0: bf16[64,32], param_1: bf16[32,16]) -> f32[64,16] {
  %param_0 = bf16[64,32]{1,0} parameter(0)
  %param_1 = bf16[32,16]{1,0} parameter(1)
  ROOT %dot_general.0 = f32[64,16]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_computation.1 (param_0.1: f32[64,16], param_1.1: f32[16,8]) -> f32[64,8] {
  %param_0.1 = f32[64,16]{1,0} parameter(0)
  %param_1.1 = f32[16,8]{1,0} parameter(1)
  ROOT %dot_general.1 = f32[64,8]{1,0} dot(%param_0.1, %param_1.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main.1 (a.1: bf16[64,32], b.1: bf16[32,16], c.1: f32[16,8]) -> f32[64,8] {
  %a.1 = bf16[64,32]{1,0} parameter(0)
  %b.1 = bf16[32,16]{1,0} parameter(1)
  %c.1 = f32[16,8]{1,0} parameter(2)
  %ynn_fusion = f32[64,16]{1,0} fusion(%a.1, %b.1), kind=kCustom, calls=%fused_computation, backend_config={"fusion_config":{"kind":"__ynn_fusion"},"outer_dimension_partitions":[]}
  %xnn_fusion = f32[64,8]{1,0} fusion(%ynn_fusion, %c.1), kind=kCustom, calls=%fused_computation.1, backend_config={"fusion_config":{"kind":"__xnn_fusion"}}
  %plain = f32[64,8]{1,0} dot(%ynn_fusion, %c.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %onednn = f32[64,8]{1,0} custom-call(%ynn_fusion, %c.1), custom_call_target="__onednn$matmul"
}
"""


def test_the_xla_options_survey_names_the_library_of_each_dot():
    survey = _xla_cpu_flags_module()
    assert survey.dot_libraries(SAMPLE_HLO) == {"YNNPACK": 1, "XNNPACK": 1, "XLA": 1, "oneDNN": 1}
    assert survey.dot_libraries("HloModule empty\n") == {}
