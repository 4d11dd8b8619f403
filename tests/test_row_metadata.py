"""Typed row metadata: what a row is (model or logit-lens layer), its thread and place along it,
and finding a store's row by any spelling of its model."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmap.row_metadata import RowMetadata, logit_lens_threads
from jaxmap.store import StoreError, StoreWriter, open_store
from jaxmap.texts import TextSet


def _layer(name, layer, parent_model, parent_key):
    recorded = {"key": f"{parent_key}@layer{layer}", "layer": layer, "num_layers": 2,
                "parent_model": parent_model, "parent_key": parent_key}
    return RowMetadata.parse(name, recorded)


def test_a_row_without_metadata_is_a_model_known_by_its_name():
    row = RowMetadata.parse("m", {})
    assert (row.key, row.reference, row.is_layer_row, row.parent, row.step) == ("m", "m", False, None, None)
    layer = _layer("./m@layer1", 1, "./m", "/abs/m")
    assert (layer.is_layer_row, layer.parent, layer.step, layer.key) == (True, "/abs/m", 1, "/abs/m@layer1")


def test_threads_follow_the_models_canonical_key_not_its_spelling():
    rows = [
        RowMetadata.parse("./m", {"key": "/one/m"}),
        _layer("./m@layer1", 1, "./m", "/one/m"),
        _layer("./m@layer0", 0, "./m", "/one/m"),
        # Another model spelled the same way in another directory: a thread of its own.
        _layer("./m@layer0 (b)", 0, "./m", "/two/m"),
        # The first model spelled otherwise: the same thread.
        _layer("m/@layer2", 2, "m/", "/one/m"),
    ]
    assert logit_lens_threads(rows) == {"/one/m": [2, 1, 4], "/two/m": [3]}


def test_find_row_by_name_key_path_or_hub_id(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    writer = StoreWriter(tmp_path / "s.h5", TextSet.from_texts(["a"]))
    for name, meta in [
        ("./model", {"key": str(model_dir.resolve())}),
        ("hub", {"key": "org/hub@abc"}),
        ("hub@layer0", {"key": "org/hub@abc@layer0", "layer": 0, "parent_key": "org/hub@abc"}),
        ("twice-1", {"key": "org/twice@1"}),
        ("twice-2", {"key": "org/twice@2"}),
    ]:
        writer.append(name, np.full(1, -1.0), np.ones(1, np.int32), np.zeros(1, bool), meta)
    store = open_store(tmp_path / "s.h5")
    assert store.find_row("hub@layer0") == 2  # as listed
    assert store.find_row("org/hub@abc") == 1  # canonical key
    assert store.find_row(str(model_dir) + "/") == 0  # another spelling of the path
    # A hub id without its revision names the model's row, not its logit-lens rows.
    assert store.find_row("org/hub") == 1
    assert store.find_row("nope") is None
    with pytest.raises(StoreError, match="'org/twice' names several rows \\(twice-1, twice-2\\)"):
        store.find_row("org/twice")


def test_map_threads_follow_the_same_rule_as_the_store():
    from jaxmap.analysis.plots import trajectory_paths

    names = ["./m", "./m@layer1", "./m@layer0", "./m@layer0 (b)", "m/@layer2", "old@layer0", "old@layer1", "old"]
    metadata = [
        {"key": "/one/m"},
        {"key": "/one/m@layer1", "layer": 1, "parent_model": "./m", "parent_key": "/one/m"},
        {"key": "/one/m@layer0", "layer": 0, "parent_model": "./m", "parent_key": "/one/m"},
        {"key": "/two/m@layer0", "layer": 0, "parent_model": "./m", "parent_key": "/two/m"},
        {"key": "/one/m@layer2", "layer": 2, "parent_model": "m/", "parent_key": "/one/m"},
        # A store from before parent_key: threaded by the model's name.
        {"layer": 0, "parent_model": "old"},
        {"layer": 1, "parent_model": "old"},
        {},
    ]
    rows = [RowMetadata.parse(name, meta) for name, meta in zip(names, metadata)]
    threads = logit_lens_threads(rows)
    assert trajectory_paths(names, metadata) == [threads["/one/m"] + [0], [5, 6, 7]]
