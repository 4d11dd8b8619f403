"""`jaxmap demo` end to end on tiny random models: a failing optional part (training, the logit
lens) leaves the map and report of what did score, with one line per failure and exit status 1;
the tables, the map and the lens picture name models by short display names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxmap import demo
from jaxmap.cli import main
from jaxmap.demo_texts import DEFAULT_DOMAINS, available_demo_domains
from jaxmap.row_metadata import RowMetadata
from jaxmap.training import TrainingError

pytestmark = pytest.mark.skipif(
    not set(DEFAULT_DOMAINS) <= set(available_demo_domains()),
    reason="the demo's text sources are not installed (scripts/install.sh)",
)


def page_data(path: Path) -> dict:
    page = path.read_text()
    return json.loads(page.split('<script type="application/json" id="map-data">', 1)[1].split("</script>", 1)[0])


def test_a_failing_optional_part_leaves_the_map_and_report_and_says_so_in_one_line(
    tiny_models, tmp_path, capsys, monkeypatch
):
    def read_only_disk(*args, **kwargs):
        raise TrainingError("cannot write the checkpoints: the disk is read-only")

    def buggy_lens(*args, **kwargs):
        raise ValueError("the lens broke")

    monkeypatch.setattr(demo, "_demo_training", read_only_disk)
    monkeypatch.setattr(demo, "_demo_logit_lens", buggy_lens)
    models = [str(m) for m in tiny_models[:3]]
    out = tmp_path / "demo"
    code = main([
        "demo", "--out", str(out), "--texts", "6", "--models", *models, "--train-steps", "4",
        "--logit-lens", models[0], "--lens-texts", "4", "--quiet",
    ])
    errors = capsys.readouterr().err.strip().splitlines()
    training = "training failed: cannot write the checkpoints: the disk is read-only"
    lens = "logit lens failed: ValueError: the lens broke (a bug; its traceback ends report.md)"
    assert code == 1
    assert errors == [f"jaxmap demo: error: {training}", f"jaxmap demo: error: {lens}"]
    report = (out / "report.md").read_text()
    assert f"  {training}\n" in report and f"  {lens}\n" in report
    # The bug's traceback, after the report's tables, names where it was raised.
    assert "in buggy_lens" in report.rsplit("Timing:", 1)[1]
    # What did score is all there: the KL table of the three models, the map.
    assert all(f"tiny-{i}  " in report for i in range(3))
    assert (out / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page_data(out / "map.html")["names"] == ["tiny-0", "tiny-1", "tiny-2"]


def test_checkpoints_and_lens_layers_are_shown_by_short_names(tiny_models, tmp_path, monkeypatch):
    import jaxmap.analysis
    import jaxmap.analysis.plots

    drawn = {}

    def spy(function, key):
        def drawing(coordinates, names, *args, **kwargs):
            drawn[key] = list(names)
            return function(coordinates, names, *args, **kwargs)

        return drawing

    monkeypatch.setattr(jaxmap.analysis, "plot_map", spy(jaxmap.analysis.plot_map, "map"))
    monkeypatch.setattr(
        jaxmap.analysis.plots, "plot_trajectories", spy(jaxmap.analysis.plots.plot_trajectories, "lens")
    )
    models = [str(m) for m in tiny_models[:3]]
    out = tmp_path / "demo"
    result = demo.run_demo(
        out, n_texts=6, models=models, train_steps=4, logit_lens=[models[0]], lens_texts=4,
        progress=False, echo=lambda line: None,
    )
    assert result.failures == ()
    checkpoints = [name for name in result.models if name.startswith(str(out / "training"))]
    # 4 steps, saved at step 0 and every quarter of the run.
    assert len(checkpoints) == 5
    shown = dict(zip(result.models, result.display_names))
    assert sorted(shown[name] for name in checkpoints) == [f"step {step}" for step in range(5)]
    assert drawn["map"] == result.display_names
    assert {f"tiny L{layer}" for layer in range(3)} <= set(drawn["lens"])
    report = (out / "report.md").read_text()
    assert str(tmp_path) not in report  # no path in the tables, neighbours, timing or lens lines
    assert "step 4 " in report and "tiny-0 (2 layers)" in report
    data = page_data(out / "map.html")
    assert data["names"] == result.display_names and data["references"] == result.models
    assert data["label_points"]  # 8 models: every name is written beside its point
    # Coloured by group from the start: the three models and the training run.
    assert data["color_by"] == "group"
    assert set(data["colorings"]["group"]["labels"]) == {"tiny-0", "tiny-1", "tiny-2", "demo training run"}
    # The full reference is kept in the hover.
    step_4 = result.display_names.index("step 4")
    assert result.models[step_4] in data["hover"][step_4]


def test_short_names_that_coincide_keep_the_full_names():
    names = ["/runs/a/final", "/runs/b/final", "/runs/c/step_00000010", "smollm2-135m-instruct", "x@layer3"]
    metadata = [{}, {}, {}, {}, {"parent_model": "smollm2-135m-instruct", "layer": 3}]
    rows = [RowMetadata.parse(name, meta) for name, meta in zip(names, metadata)]
    shown = demo._display_names(rows, {"/runs/c/step_00000010": 10})
    assert shown == ["/runs/a/final", "/runs/b/final", "step 10", "smollm2-135m-instruct", "smollm2 L3"]
