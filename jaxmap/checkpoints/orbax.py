"""Orbax checkpoints as model references, and the checkpoints ``jaxmap train`` writes.

Two layouts are read (anything else is refused with one line saying what was expected):

* **jaxmap** (what :func:`save_checkpoint` writes): a step directory ``RUN/step_00000100/``
  holding ``params/`` (an orbax PyTree checkpoint of the decoder's params tree, in the layout
  :mod:`jaxmap.models.layout` tabulates: stacked layers, ``[in, out]`` kernels),
  ``config.json`` (the HF config it translates from), the tokenizer files and
  ``jaxmap_checkpoint.json`` (step, architecture, training loss).
* **flax** (a Flax training run, as ``orbax.checkpoint.CheckpointManager`` or a plain
  ``PyTreeCheckpointer`` lays it out): a step directory that is itself an orbax PyTree
  checkpoint, or holds one as its item directory ``params``, ``state``, ``default`` or
  ``items``; ``config.json`` (HF) and the tokenizer files in the step directory or in the run
  directory above it. The params tree uses Hugging Face's Flax names, one subtree per layer:
  ``model/embed_tokens/embedding``, ``model/layers/0/self_attn/q_proj/kernel`` (``[in, out]``),
  ``model/layers/0/input_layernorm/weight`` (or ``scale``), ``model/norm/weight``,
  ``lm_head/kernel`` (``[D, V]``), optionally under one or more ``params`` keys (a TrainState;
  its other entries, such as ``opt_state`` and ``step``, are not read). Every architecture whose
  torch weights are ``nn.Linear`` is read through its adapter, which refuses tensors it does
  not use; GPT-2 (``Conv1D``) is refused.

A step directory of either layout is a model reference (:data:`ORBAX`, which claims it before
it could be taken for a plain Hugging Face directory). A **run directory** (one holding step
directories of either layout) expands to its checkpoints in step order (:func:`run_steps`), so
``jaxmap score RUN`` scores a trajectory.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import CheckpointError, OutputError
from ..outputs import describe_os_error
from .checkpoint import Checkpoint, Resolver

if TYPE_CHECKING:
    from ..models.decoder import DecoderConfig, Params

JAXMAP_FILE = "jaxmap_checkpoint.json"
PARAMS_DIR = "params"
STEP_PREFIX = "step_"
# Item directories a CheckpointManager step holds the params tree in, in order of preference.
_ITEM_NAMES = ("params", "state", "default", "items")
_TREE_MARKER = "_METADATA"
# The index of an OCDBT tree's arrays; without it orbax finds none of them.
_OCDBT_MANIFEST = "manifest.ocdbt"
_TENSORSTORE_ERRNO = re.compile(r"\[os_error_code='(\d+)'\]")
_STEP_NUMBER = re.compile(r"(\d+)$")
# Architectures whose HF torch weights are nn.Linear ([out, in]), so a Flax kernel [in, out]
# is their transpose.
_CONV1D_ARCHITECTURES = {"GPT2LMHeadModel"}


@dataclass(frozen=True)
class OrbaxLayout:
    """Where an orbax checkpoint's params tree is, and how to read it."""

    params_path: Path
    kind: str  # "jaxmap" or "flax"


def _quiet_orbax() -> None:
    # Orbax logs every save and restore (and missing optional metadata) through absl at INFO
    # and WARNING level, and a failed write or read with its traceback at ERROR level from its
    # worker threads; jaxmap reports what matters itself, in one line.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    if not getattr(sys.unraisablehook, "drops_closed_loops", False):
        sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


def _drop_closed_loop_callbacks(previous: Callable) -> Callable:
    """``previous``, except for the "Event loop is closed" errors of tensorstore's callbacks.

    When a read or write fails, tensorstore still completes its other pending futures, whose
    callbacks try to wake orbax's asyncio loop after orbax has closed it; Python prints each
    such error as an unraisable exception, a dozen tracebacks after the one-line error that
    jaxmap reports. Every other unraisable exception reaches ``previous``.
    """

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_closed_loops = True
    return hook


def _os_error(error: BaseException) -> OSError | None:
    """The operating-system error behind a failed write: an OSError, or tensorstore's
    ``ValueError`` that carries one as ``[os_error_code='28']`` (what orbax raises)."""
    if isinstance(error, OSError):
        return error
    match = _TENSORSTORE_ERRNO.search(str(error)) if isinstance(error, ValueError) else None
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, os.strerror(code))


def _reason(error: Exception) -> str:
    """An orbax error without tensorstore's spec of the store it opened (hundreds of
    characters of JSON, after the part that says what went wrong)."""
    return str(error).split(" [tensorstore_spec=", 1)[0]


def absolute(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, made absolute and its symbolic links followed.

    Orbax must be given such a path to read and write: for a relative one its
    ``PyTreeCheckpointer.metadata`` returns no item metadata at all.
    """
    return Path(path).expanduser().resolve()


def _is_tree(path: Path) -> bool:
    return (path / _TREE_MARKER).is_file()


def step_number(path: Path) -> int | None:
    """The step a checkpoint directory is named for (its trailing integer), or None."""
    match = _STEP_NUMBER.search(path.name)
    return int(match.group(1)) if match else None


def find_layout(directory: Path) -> OrbaxLayout | None:
    """The orbax layout of a step directory, or None when it holds no orbax checkpoint."""
    if (directory / JAXMAP_FILE).is_file():
        return OrbaxLayout(directory / PARAMS_DIR, "jaxmap")
    if _is_tree(directory):
        return OrbaxLayout(directory, "flax")
    for name in _ITEM_NAMES:
        if _is_tree(directory / name):
            return OrbaxLayout(directory / name, "flax")
    return None


def run_steps(directory: Path) -> list[Path]:
    """The checkpoint directories of a training run, in step order (empty if it is none)."""
    if not directory.is_dir() or find_layout(directory) is not None:
        return []
    steps = [
        child for child in directory.iterdir()
        if child.is_dir() and not child.name.startswith(".") and step_number(child) is not None
        and find_layout(child) is not None
    ]
    return sorted(steps, key=_step_order)


def expand_checkpoint_sequence(reference: str) -> list[str] | None:
    """A training run's directory as its step directories, or a glob pattern that names no file
    as its matches, in step order (then by name); None for any other reference."""
    path = Path(reference).expanduser()
    if path.is_dir():
        steps = run_steps(path)
        return [str(step) for step in steps] if steps else None
    if path.exists() or not glob.has_magic(reference):
        return None
    matches = [Path(match) for match in glob.glob(str(path))]
    if not matches:
        raise CheckpointError(f"{reference}: the pattern matches no file or directory")
    return [str(match) for match in sorted(matches, key=_step_order)]


def _step_order(path: Path) -> tuple:
    step = step_number(path)
    return (step is None, step or 0, str(path))


def config_directory(reference: str, directory: Path) -> Path:
    """The directory holding config.json for a step directory: itself, else its run directory."""
    for candidate in (directory, directory.parent):
        if (candidate / "config.json").is_file():
            return candidate
    raise CheckpointError(
        f"{reference}: an orbax checkpoint without config.json (looked in {directory} and "
        f"{directory.parent}); jaxmap needs the model's HF config.json and tokenizer files beside it"
    )


def orbax_revision(reference: str, directory: Path, layout: OrbaxLayout) -> tuple[Path, str]:
    """An orbax step directory's home (the directory holding its config.json and tokenizer
    files) and its revision, a hash of its config, tree metadata and jaxmap checkpoint file."""
    if layout.kind == "jaxmap" and not _is_tree(layout.params_path):
        raise CheckpointError(f"{reference}: {JAXMAP_FILE} but no orbax params tree in {layout.params_path}")
    home = config_directory(reference, directory)
    digest = hashlib.sha256((home / "config.json").read_bytes())
    digest.update((layout.params_path / _TREE_MARKER).read_bytes())
    if layout.kind == "jaxmap":
        digest.update((directory / JAXMAP_FILE).read_bytes())
    return home, "sha256:" + digest.hexdigest()[:16]


def _check_tree_files(checkpoint: Checkpoint) -> None:
    """Refuse a params tree whose orbax metadata is unreadable or whose OCDBT manifest is
    missing, naming the file: orbax's own error names the first array it looked for instead, and
    tensorstore's callbacks print tracebacks after it."""
    path = checkpoint.orbax.params_path
    try:
        metadata = json.loads((path / _TREE_MARKER).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(
            f"{checkpoint.reference}: cannot read {path / _TREE_MARKER} ({getattr(error, 'strerror', None) or error})"
        ) from None
    if isinstance(metadata, dict) and metadata.get("use_ocdbt") and not (path / _OCDBT_MANIFEST).is_file():
        raise CheckpointError(
            f"{checkpoint.reference}: the orbax checkpoint {path} has no {_OCDBT_MANIFEST} (the index "
            "of its arrays), so it cannot be read; it was copied or written only in part"
        )


def _tree_metadata(checkpoint: Checkpoint) -> dict:
    """The saved tree with (shape, dtype) leaves; reads no array data."""
    import jax
    import orbax.checkpoint as ocp
    from etils import epath

    _quiet_orbax()
    path = checkpoint.orbax.params_path
    _check_tree_files(checkpoint)
    # The handler rather than PyTreeCheckpointer: the checkpointer turns every failure to read
    # the tree (a missing array file, a relative path) into metadata without a tree.
    handler = ocp.PyTreeCheckpointHandler()
    try:
        tree = handler.metadata(epath.Path(absolute(path))).tree
    except Exception as error:  # noqa: BLE001 - orbax raises many kinds for a damaged tree
        raise CheckpointError(
            f"{checkpoint.reference}: cannot read the orbax checkpoint {path} ({_reason(error)})"
        ) from None
    finally:
        handler.close()
    if not isinstance(tree, dict):
        raise CheckpointError(f"{checkpoint.reference}: the orbax checkpoint {path} does not hold a dict of params")
    return jax.tree.map(lambda leaf: (tuple(leaf.shape), np.dtype(leaf.dtype)), tree)


def _restore(checkpoint: Checkpoint, tree: dict) -> dict:
    """The saved arrays as host numpy arrays (whatever devices the run saved them from)."""
    import jax
    import orbax.checkpoint as ocp

    _quiet_orbax()
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree,
                                is_leaf=lambda leaf: isinstance(leaf, tuple))
    try:
        return ocp.PyTreeCheckpointer().restore(
            absolute(checkpoint.orbax.params_path), args=ocp.args.PyTreeRestore(restore_args=restore_args)
        )
    except Exception as error:  # noqa: BLE001 - a damaged array file, named
        raise CheckpointError(
            f"{checkpoint.reference}: cannot restore the orbax checkpoint {checkpoint.orbax.params_path} "
            f"({_reason(error)})"
        ) from None


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for name, value in tree.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _flax_params_root(tree: dict) -> dict:
    # A TrainState saves {"params": ..., "opt_state": ..., "step": ...}, and Flax linen
    # variables wrap the params once more in {"params": ...}.
    while "params" in tree and isinstance(tree["params"], dict) and not {"model", "lm_head"} & set(tree):
        tree = tree["params"]
    return tree


def _hf_names(checkpoint: Checkpoint, tree: dict) -> dict[str, Any]:
    """Flax-named leaves under their HF torch names (``kernel`` → transposed ``weight``)."""
    out = {}
    for path, leaf in _flatten(_flax_params_root(tree)).items():
        stem, _, name = path.rpartition(".")
        if name == "kernel":
            if len(_shape(leaf)) != 2:
                raise CheckpointError(
                    f"{checkpoint.reference}: {path} has shape {_shape(leaf)}; the flax layout has one "
                    "[in, out] kernel per layer (stacked or per-head kernels are not read)"
                )
            out[f"{stem}.weight"] = leaf.T if isinstance(leaf, np.ndarray) else (leaf[0][::-1], leaf[1])
        elif name in ("embedding", "scale"):
            out[f"{stem}.weight"] = leaf
        else:
            out[path] = leaf
    return out


def _shape(leaf) -> tuple:
    """The shape of a restored array or of a metadata leaf ``(shape, dtype)``."""
    return leaf.shape if isinstance(leaf, np.ndarray) else leaf[0]


def _expected_decoder_tree(config: "DecoderConfig") -> dict:
    from ..models.layout import param_shapes

    return param_shapes(config, frozenset("q k v o gate up down".split()))


def _check_decoder_tree(checkpoint: Checkpoint, tree: dict, config: "DecoderConfig") -> None:
    """A jaxmap-layout tree has every param the config needs, each of its shape, and nothing
    else (projection and norm biases are optional)."""
    from ..models.layout import init_unsupported

    saved = {path: _shape(leaf) for path, leaf in _flatten(tree).items()}
    expected = {path: tuple(shape) for path, shape in _flatten(_expected_decoder_tree(config)).items()}
    where = f"{checkpoint.reference}: {checkpoint.orbax.params_path}"
    # The first dense_layers layers (DeepSeek's dense MLPs) are a stack of their own.
    stacked = config.num_layers - config.dense_layers
    layered = [path for path in saved if path.startswith("layers.") and saved[path][:1] != (stacked,)]
    if layered:
        raise CheckpointError(f"{where}: {layered[0]} is not stacked over the config's {stacked} layers")
    # A fine-tuned model with features beyond those expected here (e.g. experts) has params of
    # its own; the ones both know are still checked.
    unknown = sorted(set(saved) - set(expected))
    if unknown and not init_unsupported(config):
        raise CheckpointError(f"{where}: params the decoder does not use: {', '.join(unknown[:5])}")
    optional_bias = {
        path for path in expected
        if path.endswith(".bias") and path.startswith("layers.") and not path.split(".")[1].endswith("norm")
    }
    missing = sorted(set(expected) - set(saved) - optional_bias)
    if missing and not init_unsupported(config):
        raise CheckpointError(f"{where}: params missing for this config: {', '.join(missing[:5])}")
    for path, shape in saved.items():
        if path in expected and shape != expected[path]:
            raise CheckpointError(f"{where}: {path} has shape {shape}, config.json needs {expected[path]}")


def validate_orbax(checkpoint: Checkpoint) -> None:
    """Check an orbax checkpoint against its config from the saved tree's metadata alone."""
    from .translated import translated_config

    architecture, config = translated_config(checkpoint)
    tree = _tree_metadata(checkpoint)
    if checkpoint.orbax.kind == "jaxmap":
        _check_decoder_tree(checkpoint, tree, config)
        return
    if architecture in _CONV1D_ARCHITECTURES:
        raise CheckpointError(
            f"{checkpoint.reference}: a flax-layout orbax checkpoint of {architecture} is not read "
            "(its torch weights are Conv1D, so the Flax kernel layout is ambiguous)"
        )
    root = _flax_params_root(tree)
    if {"embed", "layers"} <= set(root) and checkpoint.orbax.params_path.name == PARAMS_DIR:
        step = checkpoint.orbax.params_path.parent
        raise CheckpointError(
            f"{checkpoint.reference}: {JAXMAP_FILE} is missing from {step}; its params are in the "
            "layout `jaxmap train` writes, which is read only with that file beside params/, "
            "config.json and the tokenizer files (copy it from another step of the run and correct its step)"
        )
    names = _hf_names(checkpoint, tree)
    if not any(name.endswith("embed_tokens.weight") or name.endswith("wte.weight") or name.endswith("embed_in.weight") for name in names):
        shown = ", ".join(sorted(names)[:4])
        raise CheckpointError(
            f"{checkpoint.reference}: {checkpoint.orbax.params_path} is not a params tree in Hugging Face's "
            f"Flax naming (no model/embed_tokens/embedding; found {shown}, ...)"
        )


def load_orbax_params(checkpoint: Checkpoint, architecture: str, config: "DecoderConfig", dtype: str) -> "Params":
    """The decoder's params as host arrays in ``dtype`` (norms and biases float32)."""
    from ..models import DTYPES, WeightSource, convert_weights
    from ..models.layout import LAYOUT
    from ..models.weights import host_array

    validate_orbax(checkpoint)
    restored = _restore(checkpoint, _tree_metadata(checkpoint))
    if checkpoint.orbax.kind == "flax":
        tensors = _hf_names(checkpoint, restored)
        source = WeightSource(tensors=tensors.__getitem__, names=frozenset(tensors), model=checkpoint.reference)
        return convert_weights(architecture, source, config, dtype)

    def cast(tree: dict, prefix: str = "") -> dict:
        # Weights in ``dtype``; norms, biases and the router stay float32 (the layout's dtypes).
        out = {}
        for name, value in tree.items():
            path = f"{prefix}{name}"
            if isinstance(value, dict):
                out[name] = cast(value, f"{path}.")
                continue
            weight = path in LAYOUT and LAYOUT[path].weight
            out[name] = host_array(value, DTYPES[dtype] if weight else np.float32)
        return out

    return cast(restored)


class OrbaxResolver(Resolver):
    """A directory holding an orbax checkpoint in either layout (see the module docstring). Its
    checkpoint's ``directory`` is the one holding config.json and the tokenizer files (the step
    directory, else its run directory) and its canonical key the step directory's resolved path;
    its revision hashes the config, the tree's metadata and the jaxmap checkpoint file."""

    source = "orbax"

    def claims(self, reference: str, path: Path) -> bool:
        """A directory in which :func:`find_layout` finds a params tree."""
        return path.is_dir() and find_layout(path) is not None

    def resolve(self, reference: str, path: Path, cache_dir: str | Path | None, progress: bool) -> Checkpoint:
        """The step directory ``path``, with its layout."""
        layout = find_layout(path)
        home, revision = orbax_revision(reference, path, layout)
        return Checkpoint(reference, home, revision, self, str(path.resolve()), orbax=layout)

    def read_config(self, reference: str, path: Path, cache_dir: str | Path | None) -> dict:
        """The config.json beside the step, without hashing the tree."""
        from .validation import read_json_object

        return read_json_object(config_directory(reference, path) / "config.json", reference)

    def check_weights(self, checkpoint: Checkpoint) -> None:
        """The saved tree's metadata against the config (:func:`validate_orbax`)."""
        validate_orbax(checkpoint)

    def load_params(self, checkpoint: Checkpoint, architecture: str, config: "DecoderConfig", dtype: str) -> "Params":
        """The params restored from the tree (:func:`load_orbax_params`)."""
        return load_orbax_params(checkpoint, architecture, config, dtype)


ORBAX = OrbaxResolver()


def _disk_bytes(directory: Path) -> int:
    """The bytes a directory's files take on disk."""
    return sum(path.lstat().st_blocks * 512 for path in directory.rglob("*") if path.is_file())


def _check_room(run_dir: Path, final: Path, array_bytes: int) -> None:
    """Refuse a checkpoint that cannot fit in the free space of the run directory's disk.

    Its size is that of the run's latest checkpoint (the same shapes), or before the first one
    its arrays' bytes. Refusing before orbax writes matters beyond saving the time: when a
    write fails midway, tensorstore's callbacks for the writes still pending may print
    "Event loop is closed" tracebacks after the command has reported the error and restored
    Python's hooks.
    """
    if not run_dir.is_dir():
        return  # created with the checkpoint; a refusal to create it names it then
    steps = run_steps(run_dir)
    needed = _disk_bytes(steps[-1]) if steps else array_bytes
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise OutputError(
            f"{final}: cannot write (the disk is full: {free / 1e6:.1f} MB free on the disk of "
            f"{run_dir}, a checkpoint needs about {needed / 1e6:.1f} MB)"
        )


def save_checkpoint(run_dir: str | Path, step: int, params: "Params", hf_config: dict, tokenizer, info: dict | None = None) -> Path:
    """Write ``RUN/step_<step>/`` in the jaxmap layout (see the module docstring) and return it.

    Written into a hidden temporary directory and renamed, so a step directory is complete or
    absent; an older checkpoint of the same step is replaced. A write the system refuses (a full
    disk, no permission) raises :class:`~jaxmap.errors.OutputError` naming the step directory,
    and the temporary directory is removed.
    """
    import jax
    import orbax.checkpoint as ocp

    _quiet_orbax()
    run_dir = Path(run_dir).expanduser()
    final = run_dir / f"{STEP_PREFIX}{step:08d}"
    partial = run_dir / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    host = jax.tree.map(np.asarray, params)
    meta = {"format": 1, "step": step, "architecture": hf_config["architectures"][0], **(info or {})}
    _check_room(run_dir, final, sum(leaf.nbytes for leaf in jax.tree.leaves(host)))
    try:
        partial.mkdir(parents=True)
        ocp.PyTreeCheckpointer().save(absolute(partial / PARAMS_DIR), host)
        (partial / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(str(partial))
        (partial / JAXMAP_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        cause = _os_error(error)
        if cause is None:
            raise
        raise OutputError(describe_os_error(final, cause)) from None
    return final


__all__ = [
    "JAXMAP_FILE",
    "ORBAX",
    "OrbaxLayout",
    "OrbaxResolver",
    "absolute",
    "expand_checkpoint_sequence",
    "find_layout",
    "load_orbax_params",
    "orbax_revision",
    "run_steps",
    "save_checkpoint",
    "step_number",
    "validate_orbax",
]
