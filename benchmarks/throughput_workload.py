"""What the throughput benchmark measures on: the model, the texts, the FLOP count, the peak.

Everything here is shared by all contenders, so that they score the same model on the same texts
and their FLOP/s are counted by one formula.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxmap.texts import TextSet, chunk_document, load_texts

DEFAULT_MODEL = "smollm2-135m-instruct"

# Llama shapes for random-initialised models: `--model random:NAME`, and the fallback when the
# packaged SmolLM2 GGUF cannot be converted (that one's shape). Throughput does not depend on
# weight values, only on these sizes.
SMOLLM2_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
RANDOM_SHAPES = {
    "smollm2-135m": SMOLLM2_SHAPE,
    # Llama-3.2-1B's shape: 1.24B parameters, the "1B-class" model of the GPU goals.
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    # A few layers of SmolLM2's width, for checking the harness itself quickly.
    "tiny": dict(SMOLLM2_SHAPE, num_hidden_layers=2, vocab_size=8192),
    # Issue 27's 112M model: 10 layers, width 768, GQA 12/4 (its vocabulary is the tokenizer's).
    "llama-112m": dict(
        SMOLLM2_SHAPE, hidden_size=768, intermediate_size=3072, num_hidden_layers=10,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
        rope_theta=10000.0,
    ),
}
RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide a decoder's FLOPs."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    gated_mlp: bool

    @property
    def layer_matmul_weights(self) -> int:
        """Weights one position multiplies through in one layer (q, k, v, o and the MLP)."""
        d = self.hidden_size
        attn, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        mlp_matrices = 3 if self.gated_mlp else 2
        return d * attn + 2 * d * kv + attn * d + mlp_matrices * d * self.intermediate_size

    @property
    def unembedding_weights(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def matmul_weights(self) -> int:
        """Non-embedding matmul weights plus the unembedding (tied or not)."""
        return self.num_layers * self.layer_matmul_weights + self.unembedding_weights

    def sequence_flops(self, positions: int) -> int:
        """Forward FLOPs for one sequence of ``positions`` input positions (see FLOP_FORMULA)."""
        attention = 4 * self.num_layers * positions**2 * self.num_heads * self.head_dim
        return 2 * self.matmul_weights * positions + attention

    def flops(self, positions: np.ndarray) -> int:
        """Total forward FLOPs over sequences with the given position counts."""
        return int(sum(self.sequence_flops(int(p)) for p in positions if p > 0))

    def describe(self) -> dict:
        return {
            **self.__dict__,
            "layer_matmul_weights": self.layer_matmul_weights,
            "unembedding_weights": self.unembedding_weights,
            "matmul_weights": self.matmul_weights,
        }


FLOP_FORMULA = (
    "per text with p scored positions (p = scored tokens; each position predicts one token): "
    "2 * W * p + 4 * L * p^2 * (H * hd), where W = L * (D*H*hd + 2*D*Hkv*hd + H*hd*D + m*D*I) "
    "+ V*D is every matmul weight a position passes through, the unembedding included (m = 3 "
    "for gated MLPs, else 2), and 4 * L * p^2 * H*hd counts QK^T and AV densely over the full "
    "p x p score matrix (causal masking makes half of it useless; it is computed anyway). "
    "Norms, rotary embeddings, softmax and the log-sum-exp are not counted; padding is not "
    "counted; the embedding lookup is free."
)


def shape_of(model_directory: Path) -> ModelShape:
    """The decoder shape of an HF-layout model, read through jaxmap's config translation."""
    from jaxmap.models import translate_config

    config = json.loads((model_directory / "config.json").read_text())
    _, decoder = translate_config(config, str(model_directory))
    return ModelShape(
        vocab_size=decoder.vocab_size,
        hidden_size=decoder.hidden_size,
        num_layers=decoder.num_layers,
        num_heads=decoder.num_heads,
        num_kv_heads=decoder.num_kv_heads,
        head_dim=decoder.head_dim,
        intermediate_size=decoder.intermediate_size,
        gated_mlp=decoder.gated_mlp,
    )


@dataclass
class BenchModel:
    """The HF-layout directory every contender loads, and how it was obtained."""

    reference: str
    directory: Path
    fallback: bool
    note: str
    # Keeps a generated model's temporary directory alive until the run ends.
    cleanup: tempfile.TemporaryDirectory | None = None


def random_model(shape: str, texts: TextSet, reason: str | None = None) -> BenchModel:
    """A random-initialised Llama of :data:`RANDOM_SHAPES` ``[shape]``, with a byte-level BPE
    tokenizer trained on the benchmark texts; ``reason`` says why the default model was
    replaced (a fallback), None when it was asked for."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    holder = tempfile.TemporaryDirectory(prefix="jaxmap-bench-model-")
    directory = Path(holder.name)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8192,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts.texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(directory)
    config = transformers.LlamaConfig(
        **RANDOM_SHAPES[shape], bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(
        directory, safe_serialization=True
    )
    note = (
        f"random-initialised Llama of the {shape} shape; its tokenizer is a byte-level BPE "
        "trained on the benchmark texts (8,192 tokens). Speed depends on shapes only."
    )
    if reason is not None:
        note = f"FALLBACK: {note} The packaged model was not usable: {reason}"
    return BenchModel(f"{RANDOM_PREFIX}{shape}", directory, reason is not None, note, holder)


def resolve_model(reference: str | None, texts: TextSet) -> BenchModel:
    """The model to benchmark: ``random:SHAPE`` (:data:`RANDOM_SHAPES`), ``reference``
    resolved by jaxmap, or the packaged SmolLM2.

    Only the default may fall back to a random model of the same shape; a reference the user
    named must load, or the run stops.
    """
    from jaxmap.checkpoints import resolve

    if reference is not None and reference.startswith(RANDOM_PREFIX):
        shape = reference[len(RANDOM_PREFIX):]
        if shape not in RANDOM_SHAPES:
            raise SystemExit(
                f"throughput.py: unknown random model shape {shape!r}; choose one of "
                f"{', '.join(RANDOM_PREFIX + name for name in RANDOM_SHAPES)}"
            )
        return random_model(shape, texts)
    if reference is not None:
        checkpoint = resolve(reference)
        note = f"{reference} ({checkpoint.source})"
        return BenchModel(reference, checkpoint.directory, False, note)
    try:
        checkpoint = resolve(DEFAULT_MODEL)
    except Exception as error:  # any failure of the optional packaged model means: fall back
        return random_model("smollm2-135m", texts, f"{type(error).__name__}: {error}")
    return BenchModel(
        DEFAULT_MODEL,
        checkpoint.directory,
        False,
        f"{DEFAULT_MODEL}: SmolLM2-135M-Instruct from the packaged Q4_1 GGUF, dequantized to "
        "float32 by jaxmap's converter",
    )


def stdlib_texts(count: int) -> TextSet:
    """A deterministic, natural-ish text set: one chunk from each Python standard-library module.

    Modules are taken in name order, the top-level ones first, then those of the standard
    library's packages (for more texts than the ~170 top-level modules; installed packages are
    not read); module i is cut by :func:`jaxmap.texts.chunk_document` with a maximum chunk size
    cycling through 256–1024 bytes (like the papers' Pile chunks), and its middle chunk is
    kept, which is ordinary code rather than a licence header.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    in_packages = sorted(
        path for path in root.glob("*/**/*.py")
        if path.relative_to(root).parts[0] not in ("site-packages", "dist-packages")
    )
    ids, texts = [], []
    for position, path in enumerate([*sorted(root.glob("*.py")), *in_packages]):
        if len(texts) == count:
            break
        source = path.read_text(encoding="utf-8", errors="replace")
        chunks = list(chunk_document(source, max_bytes=256 + (position * 389) % 769))
        if chunks:
            ids.append(f"stdlib/{path.relative_to(root).as_posix()}")
            texts.append(chunks[len(chunks) // 2])
    if len(texts) < count:
        raise ValueError(f"the standard library at {root} yields only {len(texts)} texts")
    return TextSet(tuple(ids), tuple(texts), tuple({} for _ in texts), source=f"stdlib:{root}")


def load_bench_texts(path: str | None, count: int) -> TextSet:
    """The first ``count`` texts of a JSONL file (0: all), or the standard-library set."""
    if path is None:
        return stdlib_texts(count)
    texts = load_texts(path)
    return texts.subset(range(min(count, len(texts)))) if count else texts


def stratified_subset(lengths: np.ndarray, count: int) -> np.ndarray:
    """``count`` positions spread evenly over the length-sorted order (same length profile)."""
    if count >= len(lengths):
        return np.arange(len(lengths))
    order = np.argsort(lengths, kind="stable")
    picks = np.linspace(0, len(lengths) - 1, count).round().astype(int)
    return np.sort(order[picks])


def matmul_peak(size: int, repeats: int, torch_device: str = "cpu") -> dict[str, float]:
    """Best-of-``repeats`` GFLOP/s of one size×size matmul in JAX and in torch.

    ``jax_float32`` asks for full-precision products (no TF32 on GPUs), as jaxmap's float32
    scorers do; ``jax_bfloat16`` multiplies bfloat16 inputs with float32 accumulation and output
    (``preferred_element_type``), the mode a bfloat16 forward pass uses. torch runs on
    ``torch_device`` (synchronised before the clock stops).
    """
    import jax
    import jax.numpy as jnp
    import torch

    flops = 2 * size**3
    results = {}
    key = jax.random.PRNGKey(0)
    a32 = jax.random.normal(key, (size, size), jnp.float32)
    b32 = jax.random.normal(jax.random.fold_in(key, 1), (size, size), jnp.float32)
    variants = {
        "jax_float32": (
            jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)), a32, b32
        ),
        "jax_bfloat16": (
            jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32)),
            a32.astype(jnp.bfloat16),
            b32.astype(jnp.bfloat16),
        ),
    }
    for name, (function, a, b) in variants.items():
        function(a, b).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            function(a, b).block_until_ready()
            best = min(best, time.perf_counter() - started)
        results[name] = flops / best / 1e9
    synchronize = torch.cuda.synchronize if torch_device.startswith("cuda") else (lambda: None)

    def torch_rate(dtype, side: int) -> float:
        a = torch.randn(side, side, device=torch_device).to(dtype)
        torch.matmul(a, a)
        synchronize()
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            torch.matmul(a, a)
            synchronize()
            best = min(best, time.perf_counter() - started)
        return 2 * side**3 / best / 1e9

    for name, dtype in (("torch_float32", torch.float32), ("torch_bfloat16", torch.bfloat16)):
        # CPUs without bfloat16 instructions run torch's bfloat16 matmul at ~1 GFLOP/s (seen on
        # an AMD EPYC): a 4096² product would take minutes, so the size shrinks until one
        # product is estimated at a second or less, and the size measured is reported.
        side, small = size, torch_rate(dtype, 256)
        while side > 256 and 2 * side**3 / (small * 1e9) > 1.0:
            side //= 2
        results[name] = torch_rate(dtype, side)
        if side != size:
            results[f"{name}_size"] = side
    return results


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The CPU's matrix features, as /proc/cpuinfo's flags spell them: Intel AMX tiles (bfloat16 and
# int8), AVX-512 with its bfloat16 dot products, AVX2 with FMA. XLA's and oneDNN's CPU kernels
# pick their code paths by these, so a result means little without them.
MATRIX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2", "fma")


def cpu_matrix_features(cpuinfo: str | None = None) -> dict:
    """The CPU model and which of :data:`MATRIX_FLAGS` its first processor's ``flags`` line
    lists (``cpuinfo``: the text of /proc/cpuinfo, read when None): ``{"model": …, "flags":
    {flag: bool}, "amx": bool, "avx512_bf16": bool}``; flags are None where there is no
    cpuinfo to read (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = None, None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
    present = {f: (f in flags) if flags is not None else None for f in MATRIX_FLAGS}
    return {
        "model": model or platform.processor() or "unknown",
        "flags": present,
        "amx": None if flags is None else all(present[f] for f in ("amx_tile", "amx_bf16")),
        "avx512_bf16": present["avx512_bf16"],
    }


def describe_matrix_features(features: dict) -> str:
    """One line: ``AMD EPYC: AMX no, AVX-512 BF16 yes (flags: avx512_bf16 avx512f avx2 fma)``."""
    def word(value) -> str:
        return "unknown" if value is None else ("yes" if value else "no")

    listed = " ".join(f for f, on in features["flags"].items() if on) or "none of them"
    return (
        f"{features['model']}: AMX {word(features['amx'])}, AVX-512 BF16 "
        f"{word(features['avx512_bf16'])} (flags: {listed})"
    )


def machine_name() -> str:
    """A short machine label for file names: ``cpu-2core``, or the accelerator JAX runs on
    (e.g. ``gpu-nvidia-h200``)."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu-{os.cpu_count()}core"
    kind = "-".join(str(device.device_kind).lower().split())
    return f"{device.platform}-{kind}"


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Hardware and software the numbers were taken on."""
    import jax

    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "name": machine_name(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": [f for f in wanted if f" {f}" in flags],
        "cpu_matrix_features": cpu_matrix_features(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": {
            p: _version(p) for p in ("jax", "jaxlib", "jaxmap", "torch", "transformers", "lm-eval")
        },
        "git_commit": commit,
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }
