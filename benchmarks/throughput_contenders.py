"""The ways of scoring texts that the throughput benchmark races against each other.

Every contender scores texts of one :class:`~jaxmap.texts.TextSet` with one model directory and
returns per-text log-likelihoods, scored-token counts and the seconds it took. Timed work
includes tokenization (every contender starts from strings) but not loading the model, which
each does once. jaxmap goes through its public ``jaxmap.score`` API, whose every call loads the
weights again; the engine reports that load time and it is subtracted (and reported).

Every pass also reports two more figures (``extra``): ``end_to_end_seconds``, what a person
scoring these texts from the model directory waits for (jaxmap: the whole ``jaxmap.score`` call,
loading, tokenizing and the store included; transformers: the pass plus the one-time loads of
the tokenizer and the model), and ``scoring_seconds``, the scoring alone (jaxmap: the engine's
scoring loop, without compiling; transformers: the forward loop, without tokenizing).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxmap.texts import TextSet


@dataclass
class RunOutput:
    """One timed pass of a contender over its texts."""

    loglik: np.ndarray
    ntokens: np.ndarray
    seconds: float
    extra: dict = field(default_factory=dict)


class TorchModels:
    """The transformers tokenizer and models, loaded once and shared by the torch contenders,
    on ``device`` ("cpu" or "cuda")."""

    def __init__(self, directory: Path, threads: int, device: str = "cpu") -> None:
        import torch
        from transformers import AutoTokenizer

        torch.set_num_threads(threads)
        self.directory = directory
        self.device = device
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.tokenizer_seconds = time.perf_counter() - started
        self._models: dict[str, object] = {}
        self.load_seconds: dict[str, float] = {}

    def model(self, dtype: str):
        """The model in ``dtype`` ("float32" or "bfloat16"), in eval mode."""
        if dtype not in self._models:
            import torch
            from transformers import AutoModelForCausalLM

            started = time.perf_counter()
            self._models[dtype] = AutoModelForCausalLM.from_pretrained(
                str(self.directory), dtype=getattr(torch, dtype)
            ).to(self.device).eval()
            self.load_seconds[dtype] = time.perf_counter() - started
        return self._models[dtype]

    def setup_seconds(self, dtype: str) -> float:
        """The one-time loads a scoring in ``dtype`` needs: the tokenizer and the model."""
        self.model(dtype)
        return self.tokenizer_seconds + self.load_seconds[dtype]

    @property
    def max_length(self) -> int:
        config = self.model("float32").config
        return int(getattr(config, "max_position_embeddings", None) or config.n_positions)


def batched_logliks(
    model, sequences: list[list[int]], batch_tokens: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-sequence log-likelihood of tokens 1.. given the earlier ones, in length-sorted batches.

    The careful batched transformers loop: longest sequences first, as many rows as fit in
    ``batch_tokens`` padded positions, right padding with an attention mask, no autograd, and
    ``logit[target] − logsumexp(logits)`` so no second vocabulary-sized tensor is written (a
    float32 copy of the logits is made for bfloat16 models: a log-sum-exp over 50k bfloat16
    values, with their 8-bit mantissas, would be off by far more than the model's own error). Sums accumulate in float64.
    Batches go to the model's device; the sums come back once per batch. Returns
    log-likelihoods, scored-token counts and the share of computed positions that were padding.
    """
    import torch

    lengths = np.array([len(s) for s in sequences])
    loglik = np.zeros(len(sequences), np.float64)
    order = [int(i) for i in np.argsort(-lengths, kind="stable") if lengths[i] > 1]
    position = padded = 0
    with torch.inference_mode():
        while position < len(order):
            longest = int(lengths[order[position]])
            members = order[position : position + max(1, batch_tokens // longest)]
            position += len(members)
            padded += len(members) * longest
            ids = torch.zeros((len(members), longest), dtype=torch.long)
            mask = torch.zeros((len(members), longest), dtype=torch.long)
            for row, index in enumerate(members):
                ids[row, : lengths[index]] = torch.tensor(sequences[index])
                mask[row, : lengths[index]] = 1
            ids, mask = ids.to(model.device), mask.to(model.device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            logits = logits.float()
            targets = ids[:, 1:]
            picked = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, -1)
            sums = torch.where(mask[:, 1:].bool(), picked, 0.0).sum(1, dtype=torch.float64)
            loglik[members] = sums.cpu().numpy()
    real = int(lengths[order].sum())
    return loglik, np.maximum(lengths - 1, 0), 1.0 - real / padded if padded else 0.0


class Contender:
    """Base of all contenders: a name, a dtype, which texts it scores, and how.

    ``run`` is one timed pass over the contender's texts. ``warm_up`` is the untimed first
    pass: for torch, two texts are enough to set up its kernels and allocator.
    """

    name: str
    dtype: str
    description: str
    # "paper" scores tokenizer.encode(text)[1:]; "lm-eval" scores every text token after a prefix.
    policy: str = "paper"
    WARM_UP_TEXTS = 2

    def __init__(self, texts: TextSet, indices: np.ndarray | None = None) -> None:
        self.indices = np.arange(len(texts)) if indices is None else indices
        self.texts = [texts.texts[i] for i in self.indices]

    def score(self, texts: list[str]) -> RunOutput:
        """Score ``texts``, timing everything from the strings on."""
        raise NotImplementedError

    def run(self) -> RunOutput:
        return self.score(self.texts)

    def warm_up(self) -> RunOutput:
        return self.score(self.texts[: self.WARM_UP_TEXTS])

    def close(self) -> None:
        """Release temporary files (nothing by default)."""


class JaxmapScore(Contender):
    """``jaxmap.score`` on the model directory, bos_policy="paper", into a fresh store per pass
    (``packing="auto"``, or ``"buckets"`` for the ``-buckets`` contenders; the ``-pallas`` ones
    run the Pallas attention and log-prob kernels)."""

    def __init__(
        self, texts: TextSet, directory: Path, dtype: str, batch_tokens: int, packing: str = "auto",
        pallas: bool = False,
    ) -> None:
        super().__init__(texts)
        self.directory = directory
        self.dtype = dtype
        self.batch_tokens = batch_tokens
        self.packing = packing
        self.kernels = (
            {"attention": "pallas", "logprob": "pallas"} if pallas
            else {"attention": "auto", "logprob": "fused"}
        )
        self.name = (
            f"jaxmap-{'f32' if dtype == 'float32' else 'bf16'}"
            + ("-buckets" if packing == "buckets" else "") + ("-pallas" if pallas else "")
        )
        self.description = (
            f"jaxmap.score([model], texts, out=<fresh .h5>, dtype={dtype!r}, bos_policy='paper', "
            f"packing={packing!r}, attention={self.kernels['attention']!r}, "
            f"logprob={self.kernels['logprob']!r}, "
            f"batch_tokens={batch_tokens}, progress=False); timed = wall time of the call minus "
            "the weight-load time the engine records (tokenization, batching, forward, store "
            "write included)"
        )
        self._workdir = tempfile.TemporaryDirectory(prefix="jaxmap-bench-store-")

    def warm_up(self) -> RunOutput:
        # A full pass: jaxmap compiles one scorer per batch shape, and the shapes depend on
        # all the texts.
        return self.run()

    def score(self, texts: list[str]) -> RunOutput:
        import jaxmap

        # A fresh store and token cache each pass: jaxmap would otherwise skip the finished
        # model, and tokenization is part of every other contender's timed work too.
        work = Path(tempfile.mkdtemp(dir=self._workdir.name))
        started = time.perf_counter()
        store = jaxmap.score(
            [str(self.directory)],
            texts,
            out=work / "scores.h5",
            dtype=self.dtype,
            bos_policy="paper",
            batch_tokens=self.batch_tokens,
            packing=self.packing,
            progress=False,
            **self.kernels,
        )
        wall = time.perf_counter() - started
        meta = store.model_meta[0]
        shutil.rmtree(work)
        return RunOutput(
            store.loglik[0].astype(np.float64),
            store.ntokens[0].astype(np.int64),
            wall - meta["load_seconds"],
            {
                "end_to_end_seconds": wall,
                "scoring_seconds": meta["seconds"],
                "wall_seconds": wall,
                "load_seconds": meta["load_seconds"],
                "engine_seconds": meta["seconds"],
                "compilations": meta["compilations"],
                "compile_seconds": meta["compile_seconds"],
                "padding_fraction": meta["padding_fraction"],
                "batch_shapes": meta["batch_shapes"],
                "batching": meta["batching"],
            },
        )

    def close(self) -> None:
        self._workdir.cleanup()


class TransformersBatched(Contender):
    """The careful batched transformers loop (:func:`batched_logliks`) in float32 or bfloat16."""

    def __init__(self, texts: TextSet, models: TorchModels, dtype: str, batch_tokens: int) -> None:
        super().__init__(texts)
        self.models = models
        self.dtype = dtype
        self.batch_tokens = batch_tokens
        self.name = f"hf-batched-{'f32' if dtype == 'float32' else 'bf16'}"
        self.description = (
            f"transformers {dtype} model, torch.inference_mode, fast batch tokenization "
            f"(tokenizer(texts)), length-sorted batches of <= {batch_tokens} padded tokens, right "
            "padding + attention_mask, logit[target] - logsumexp(logits), masked float64 sum"
        )
        models.model(dtype)

    def score(self, texts: list[str]) -> RunOutput:
        started = time.perf_counter()
        ids = self.models.tokenizer(texts)["input_ids"]
        ids = [sequence[: self.models.max_length] for sequence in ids]
        looping = time.perf_counter()
        loglik, ntokens, padding = batched_logliks(
            self.models.model(self.dtype), ids, self.batch_tokens
        )
        ended = time.perf_counter()
        return RunOutput(
            loglik, ntokens, ended - started,
            {
                "padding_fraction": padding,
                "scoring_seconds": ended - looping,
                "end_to_end_seconds": ended - started + self.models.setup_seconds(self.dtype),
            },
        )


class PaperLoop(Contender):
    """The 1,000-model paper's scoring loop, re-implemented step for step.

    After ``LikelihoodCalculator`` in github.com/shimo-lab/modelmap
    (1000models/codes/src/calculator/likelihood.py): each text is encoded once to check its
    length and again with truncation to the model's context; then, one text at a time (batch
    1), a no-grad forward with ``use_cache=True``, ``log_softmax`` over the whole [1, T, V]
    logits, and a Python loop over positions pulling each next-token log-probability to the
    host with ``float(...)`` (one device sync per token), summed in Python. The paper ran
    float16 on GPUs; ``paper-loop-bf16`` is its 16-bit run (bfloat16, the 16-bit type jaxmap
    has), ``paper-loop-f32`` the float32 one.
    """

    def __init__(
        self, texts: TextSet, models: TorchModels, indices: np.ndarray, dtype: str = "float32"
    ) -> None:
        super().__init__(texts, indices)
        self.models = models
        self.dtype = dtype
        self.name = f"paper-loop-{'f32' if dtype == 'float32' else 'bf16'}"
        self.description = (
            "the 1,000-model paper's loop (shimo-lab/modelmap LikelihoodCalculator): encode "
            "twice per text (length check, then truncating), batch 1 forward with use_cache=True, "
            f"log_softmax of the full logits, float() per token, Python sum; {dtype}"
        )
        models.model(self.dtype)

    def score(self, texts: list[str]) -> RunOutput:
        import torch

        tokenizer, model = self.models.tokenizer, self.models.model(self.dtype)
        max_length = self.models.max_length
        started = time.perf_counter()
        tokenized, over_length = [], 0
        for text in texts:
            # The paper encodes each text twice: once to record over-long texts, once to truncate.
            over_length += len(tokenizer.encode(text)) > max_length
            tokenized.append(
                tokenizer.encode(
                    text, return_tensors="pt", truncation=True, max_length=max_length
                ).to(self.models.device)
            )
        loglik, ntokens = [], []
        looping = time.perf_counter()
        for tokens in tokenized:
            with torch.no_grad():
                log_probs = torch.log_softmax(model(tokens, use_cache=True).logits, dim=-1)
                next_tokens = tokens[0, 1:]
                token_log_probs = [
                    float(log_probs[0, i, next_tokens[i]]) for i in range(tokens.shape[1] - 1)
                ]
            loglik.append(sum(token_log_probs))
            ntokens.append(len(token_log_probs))
        ended = time.perf_counter()
        return RunOutput(
            np.array(loglik), np.array(ntokens), ended - started,
            {
                "over_length": over_length,
                "scoring_seconds": ended - looping,
                "end_to_end_seconds": ended - started + self.models.setup_seconds(self.dtype),
            },
        )


class LmEvalRolling(Contender):
    """lm-evaluation-harness's ``HFLM.loglikelihood_rolling`` on the same transformers model.

    lm-eval scores every text token after a prefix token (BOS, else EOS) in rolling windows of
    the model's context, so it scores one token more per text than the ``paper`` policy when
    the tokenizer adds no BOS; its agreement is checked against the batched transformers loop
    on exactly its token sequences.
    """

    policy = "lm-eval"

    def __init__(self, texts: TextSet, models: TorchModels, batch_size: int) -> None:
        super().__init__(texts)
        from lm_eval.models.huggingface import HFLM

        self.models = models
        self.dtype = "float32"
        self.batch_size = batch_size
        self.name = "lm-eval-f32"
        self.description = (
            f"lm_eval HFLM(pretrained=<the float32 transformers model>, batch_size={batch_size})"
            ".loglikelihood_rolling(texts); float32"
        )
        model = models.model(self.dtype)
        started = time.perf_counter()
        self.lm = HFLM(
            pretrained=model,
            tokenizer=models.tokenizer,
            batch_size=batch_size,
            device=models.device,
        )
        self.wrap_seconds = time.perf_counter() - started  # lm-eval's own set-up

    def scored_sequences(self, texts: list[str]) -> list[list[int]]:
        """The token sequences lm-eval scores (prefix + text tokens), for the agreement check."""
        return [[self.lm.prefix_token_id, *self.lm.tok_encode(text)] for text in texts]

    def score(self, texts: list[str]) -> RunOutput:
        from lm_eval.api.instance import Instance

        requests = [
            Instance("loglikelihood_rolling", doc={}, arguments=(text,), idx=i)
            for i, text in enumerate(texts)
        ]
        started = time.perf_counter()
        values = self.lm.loglikelihood_rolling(requests, disable_tqdm=True)
        seconds = time.perf_counter() - started
        # lm-eval tokenizes inside the timed call; counting its tokens again is outside it.
        ntokens = np.array([len(self.lm.tok_encode(text)) for text in texts])
        return RunOutput(
            np.array(values, np.float64), ntokens, seconds,
            {
                # lm-eval tokenizes inside the call: its scoring alone is the whole call.
                "scoring_seconds": seconds,
                "end_to_end_seconds": seconds + self.models.setup_seconds(self.dtype) + self.wrap_seconds,
            },
        )
