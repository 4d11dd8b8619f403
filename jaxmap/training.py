"""Training runs that produce checkpoint trajectories: ``jaxmap train``.

A run trains a :class:`~jaxmap.module.DecoderLM` with optax (AdamW, linear warmup then
cosine decay, gradient clipping by global norm) on next-token cross-entropy over a jaxmap text
set, and writes an orbax checkpoint every ``save_every`` steps (step 0, the starting model,
included) into a run directory (:func:`jaxmap.checkpoints.orbax.save_checkpoint`). Each step
directory is a model reference; the run directory is the trajectory (``jaxmap score RUN``).

The model is either a loaded one (fine-tuning; its tokenizer is reused) or a new one from
scratch: an HF config.json, or an architecture name plus sizes (:func:`scratch_config`), with a
tokenizer directory. Texts are tokenized with the ``full`` policy (start token, then the text),
concatenated and cut into windows of ``seq_len + 1`` tokens, drawn in a seeded order: a run is
deterministic given its seed.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import JaxmapError

# Projections with a bias in each architecture's checkpoints (the others have none).
_ALL_LINEAR = frozenset("q k v o up down".split())
_SCRATCH_BIASES = {
    "GPT2LMHeadModel": _ALL_LINEAR,
    "GPTNeoXForCausalLM": _ALL_LINEAR,
    "Qwen2ForCausalLM": frozenset("q k v".split()),
}
# The generic size settings, and the names HF config classes know them by.
_SIZE_NAMES = {
    "hidden_size": ("hidden_size",),
    "num_hidden_layers": ("num_hidden_layers",),
    "num_attention_heads": ("num_attention_heads",),
    "num_key_value_heads": ("num_key_value_heads",),
    "intermediate_size": ("intermediate_size", "n_inner"),
    "max_position_embeddings": ("max_position_embeddings",),
}


class TrainingError(JaxmapError):
    """A training run that cannot start (bad settings, too few tokens, a used run directory)."""


@dataclass
class TrainResult:
    """What a run wrote and how its loss went."""

    run_dir: Path
    checkpoints: list[Path]
    losses: list[float]
    seconds: float
    tokens_per_step: int
    settings: dict = field(default_factory=dict)
    module: object = None  # the trained DecoderLM, as the last checkpoint holds it


def _architecture_name(name: str) -> str:
    from .models import ARCHITECTURES

    if name in ARCHITECTURES:
        return name
    by_type = {entry.model_type: entry.name for entry in ARCHITECTURES.values()}
    if name in by_type:
        return by_type[name]
    raise TrainingError(
        f"unknown architecture {name!r}; choose a class or model_type of: {', '.join(sorted(by_type))}"
    )


def scratch_config(
    architecture: str,
    tokenizer,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
) -> dict:
    """An HF config.json (as a dict) for a new model of ``architecture`` (class name such as
    ``LlamaForCausalLM`` or model_type such as ``llama``) at the given sizes, with the
    tokenizer's vocabulary and special tokens. Every other setting is transformers' default for
    that architecture."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    from .models import ARCHITECTURES

    kv_heads = num_key_value_heads or num_attention_heads
    if hidden_size % num_attention_heads:
        raise TrainingError(
            f"--hidden-size {hidden_size} is not a multiple of --heads {num_attention_heads}: "
            "every attention head takes an equal share of the hidden size"
        )
    if num_attention_heads % kv_heads:
        raise TrainingError(
            f"--heads {num_attention_heads} is not a multiple of --kv-heads {kv_heads}: every "
            "key/value head serves an equal group of query heads"
        )
    name = _architecture_name(architecture)
    defaults = AutoConfig.for_model(ARCHITECTURES[name].model_type)
    sizes = {
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "max_position_embeddings": max_position_embeddings,
    }
    present = defaults.to_dict()
    attribute_map = getattr(defaults, "attribute_map", {})
    settings = {}
    for setting, value in sizes.items():
        known = [alias for alias in _SIZE_NAMES[setting] if alias in present or alias in attribute_map]
        if not known:
            if setting == "num_key_value_heads" and value == num_attention_heads:
                continue  # multi-head attention is the only kind this architecture has
            raise TrainingError(f"{name} has no setting {setting}")
        settings[attribute_map.get(known[0], known[0])] = value
    if "head_dim" in present:
        settings["head_dim"] = hidden_size // num_attention_heads
    # Built by the config class, so that settings derived from the sizes (such as the per-layer
    # attention kinds) follow them, and sizes it cannot build (an odd rotary dimension) are
    # refused by the architecture's own rules.
    try:
        config = AutoConfig.for_model(ARCHITECTURES[name].model_type, **settings).to_dict()
    except (ValueError, StrictDataclassError) as error:
        reason = error.__cause__ or error  # huggingface_hub's validation wraps the config's own
        raise TrainingError(
            f"{name} cannot be built at --hidden-size {hidden_size}, --heads {num_attention_heads}, "
            f"--kv-heads {kv_heads}: {' '.join(str(reason).split())}"
        ) from None
    config.update(
        architectures=[name],
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
    )
    for transient in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(transient, None)
    return config


def new_module(hf_config: dict, tokenizer, seed: int = 0):
    """A randomly initialised :class:`~jaxmap.module.DecoderLM` for an HF config."""
    from .models import translate_config
    from .models.layout import init_params, init_unsupported
    from .module import DecoderLM

    architecture, config = translate_config(hf_config, "the new model's config")
    unsupported = init_unsupported(config)
    if unsupported:
        raise TrainingError(
            f"{architecture}: training from scratch does not build params for {', '.join(unsupported)}; "
            "fine-tune a model of it instead"
        )
    params = init_params(config, seed, _SCRATCH_BIASES.get(architecture, frozenset()))
    return DecoderLM(
        config, params, architecture=architecture, hf_config=hf_config, tokenizer=tokenizer,
        reference=f"new {architecture}",
    )


def token_windows(texts, tokenizer, seq_len: int) -> np.ndarray:
    """The texts' tokens (``full`` policy), concatenated and cut into ``[W, seq_len + 1]``
    windows (the tail that fills no window is dropped)."""
    from .texts import as_text_set
    from .tokenization import tokenize

    tokens = tokenize(as_text_set(texts), tokenizer, "full")
    stream = np.asarray(tokens.flat, np.int32)
    count = len(stream) // (seq_len + 1)
    if count == 0:
        raise TrainingError(
            f"the texts hold {len(stream)} tokens, fewer than one window of --seq-len {seq_len} + 1"
        )
    return stream[: count * (seq_len + 1)].reshape(count, seq_len + 1)


def optimizer(
    steps: int, learning_rate: float, warmup_steps: int, weight_decay: float, clip_norm: float
):
    """AdamW on a linear-warmup + cosine-decay schedule (to a tenth of the peak), after clipping
    the gradient's global norm. Weight decay applies to matrices only (not norms, biases)."""
    import jax
    import optax

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, max(warmup_steps, 1), max(steps, warmup_steps + 1), learning_rate / 10
    )
    decay_mask = lambda params: jax.tree.map(lambda leaf: leaf.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask),
    )


def _train_step():
    """One jitted AdamW step on the mean next-token cross-entropy of a batch of full windows."""
    import jax.numpy as jnp
    from flax import nnx

    @nnx.jit
    def step(module, optimizer, tokens):
        mask = jnp.ones((tokens.shape[0], tokens.shape[1] - 1), jnp.bool_)
        loss, grads = nnx.value_and_grad(lambda model: model.mean_nll(tokens, mask))(module)
        optimizer.update(module, grads)
        return loss

    return step


@contextmanager
def _stop_after_checkpoint() -> Iterator[None]:
    """Hold a first SIGINT or SIGTERM until the checkpoint being written is complete.

    Orbax writes a checkpoint's arrays from worker threads; stopping the main thread in the
    middle would leave them writing into the temporary directory it then removes. A second
    signal is not held: it stops the run at once. Signals without a Python handler (the
    defaults, outside the ``jaxmap`` command) and runs outside the main thread are left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    handlers = {signum: handler for signum, handler in handlers.items() if callable(handler)}
    held: list[int] = []
    restored = False

    def restore() -> None:
        # Once only: the handler called for a second signal may install handlers of its own.
        nonlocal restored
        if not restored:
            restored = True
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def hold(signum: int, frame) -> None:
        if held:
            restore()
            handlers[signum](signum, frame)
        held.append(signum)

    for signum in handlers:
        signal.signal(signum, hold)
    try:
        yield
    finally:
        restore()
    if held:
        handlers[held[0]](held[0], None)


def _kept(out: Path, checkpoints: list[Path]) -> str:
    """Which checkpoints a run that stopped early leaves in its run directory."""
    if not checkpoints:
        return f"no checkpoint was written to {out}"
    if len(checkpoints) == 1:
        return f"its 1 checkpoint is kept in {out} ({checkpoints[0].name})"
    return f"its {len(checkpoints)} checkpoints are kept in {out} ({checkpoints[0].name} … {checkpoints[-1].name})"


def train(
    texts,
    out: str | Path,
    *,
    model=None,
    hf_config: dict | None = None,
    tokenizer=None,
    steps: int = 200,
    batch_size: int = 8,
    seq_len: int = 64,
    learning_rate: float = 3e-3,
    warmup_steps: int = 20,
    weight_decay: float = 0.01,
    clip_norm: float = 1.0,
    save_every: int = 50,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train and checkpoint into the run directory ``out``; see the module docstring.

    ``model``: a :class:`~jaxmap.module.DecoderLM` or a model reference to fine-tune
    (loaded in float32); else ``hf_config`` (a dict or a config.json path) and ``tokenizer``
    (a tokenizer or a directory with tokenizer.json) make a new model initialised from
    ``seed``. Checkpoints are written at step 0, every ``save_every`` steps and at the last
    step; ``out/training.json`` records the settings and the loss of every step. Returns the
    :class:`TrainResult`.
    """
    import jax
    import optax  # noqa: F401 - fail here, not mid-run, if it is missing
    from flax import nnx
    from tqdm.auto import tqdm

    from .checkpoints.orbax import run_steps, save_checkpoint
    from .errors import OutputError
    from .module import DecoderLM, load
    from .outputs import atomic_output, make_directory
    from .tokenization import load_tokenizer

    for name, value in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len), ("save_every", save_every)):
        if value < 1:
            raise TrainingError(f"{name} must be at least 1, got {value}")
    from .texts import as_text_set

    started = time.perf_counter()
    # The texts first: a bad text file is named before any model is loaded.
    texts = as_text_set(texts)
    if model is not None:
        module = model if isinstance(model, DecoderLM) else load(str(model), dtype="float32")
    else:
        if hf_config is None or tokenizer is None:
            raise TrainingError("training from scratch needs a config (or architecture) and a tokenizer directory")
        if not isinstance(hf_config, dict):
            from .checkpoints.validation import read_json_object

            hf_config = read_json_object(Path(hf_config).expanduser(), str(hf_config))
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer(Path(tokenizer).expanduser())
        module = new_module(hf_config, tokenizer, seed)
    if seq_len + 1 > module.config.max_positions:
        raise TrainingError(f"seq_len {seq_len} + 1 exceeds the model's context of {module.config.max_positions}")
    windows = token_windows(texts, module.tokenizer, seq_len)
    out = make_directory(out)
    if run_steps(out):
        raise TrainingError(f"{out} holds checkpoints of an earlier run; give another --out or remove them")

    tx = optimizer(steps, learning_rate, warmup_steps, weight_decay, clip_norm)
    opt = nnx.Optimizer(module, tx, wrt=nnx.Param)
    step_fn = _train_step()
    order = np.random.default_rng(seed)
    settings = {
        "model": module.reference, "architecture": module.architecture, "steps": steps,
        "batch_size": batch_size, "seq_len": seq_len, "learning_rate": learning_rate,
        "warmup_steps": warmup_steps, "weight_decay": weight_decay, "clip_norm": clip_norm,
        "save_every": save_every, "seed": seed, "windows": int(len(windows)),
    }

    def save(step: int, recent: list[float]) -> Path:
        info = {"seed": seed, "tokens_seen": step * batch_size * seq_len}
        if recent:
            info["train_loss"] = float(np.mean(recent))
        return save_checkpoint(out, step, module.params_tree(), module.hf_config, module.tokenizer, info)

    checkpoints: list[Path] = []
    losses: list[float] = []
    pending: list[int] = []
    bar = tqdm(total=steps, desc="training", unit="step", disable=not progress)
    try:
        with _stop_after_checkpoint():
            checkpoints.append(save(0, []))
        for step in range(1, steps + 1):
            if len(pending) < batch_size:
                pending.extend(order.permutation(len(windows)).tolist())
            rows, pending = pending[:batch_size], pending[batch_size:]
            loss = float(jax.device_get(step_fn(module, opt, jax.numpy.asarray(windows[rows]))))
            if not np.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss} at step {step}; lower --learning-rate; {_kept(out, checkpoints)}"
                )
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if step % save_every == 0 or step == steps:
                with _stop_after_checkpoint():
                    checkpoints.append(save(step, losses[-save_every:]))
        seconds = time.perf_counter() - started
        record = {**settings, "seconds": seconds, "losses": losses, "checkpoints": [c.name for c in checkpoints]}
        with atomic_output(out / "training.json") as temporary:
            temporary.write_text(json.dumps(record, indent=1) + "\n")
    except KeyboardInterrupt as interrupt:
        # What the command's one line on stopping says (jaxmap.cli.interrupts.leave).
        interrupt.outcome = f"{_kept(out, checkpoints)}; training.json was not written"
        raise
    except OutputError as error:
        raise OutputError(f"{error}; {_kept(out, checkpoints)}") from None
    finally:
        bar.close()
    if echo:
        echo(f"{out}: {len(checkpoints)} checkpoints, loss {losses[0]:.3f} → {losses[-1]:.3f} in {seconds:.1f} s")
    return TrainResult(out, checkpoints, losses, seconds, batch_size * seq_len, settings, module)


__all__ = ["TrainResult", "TrainingError", "new_module", "optimizer", "scratch_config", "token_windows", "train"]
