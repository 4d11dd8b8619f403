"""How a model is scored: the settings every scoring path shares, checked once.

:class:`ScoringOptions` is built where settings come in (:func:`jaxmap.score_job` and
``jaxmap score``, or :func:`jaxmap.engine.score_tokens` called with keywords) and travels whole
from there down to the engine, which takes it as valid. A bad value fails here, in one line,
before any model is resolved or loaded.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

from .batching import LONG_TEXT_POLICIES, MIN_BUCKET, PACKINGS
from .errors import JaxmapError
from .models import DTYPES
from .models.attention import PATHS as ATTENTION_PATHS
from .tokenization import POLICIES

# float32 by default: neighbouring checkpoints differ by KL of 1e-3 nats per text or less, which
# bfloat16 rounding (about 0.1 nats per text) would drown. bfloat16 is for throughput runs.
DEFAULT_DTYPE = "float32"

# How the targets' log-probs are computed (jaxmap.models.DecoderConfig.logprob).
LOGPROB_KERNELS = ("fused", "pallas")


@dataclass(frozen=True)
class ScoringOptions:
    """What decides how a model is scored, validated when built.

    - ``dtype``: the weights' and matmuls' dtype (accumulation and softmax stay float32);
    - ``bos_policy``: ``"full"`` or ``"paper"`` (:mod:`jaxmap.tokenization`);
    - ``batch_tokens``: padded tokens per batch, all data shards together (None: the engine's
      default for the backend, :func:`jaxmap.engine.default_batch_tokens` per data shard);
    - ``long_texts``: texts longer than a model's context are cut to it (``"truncate"``) or
      scored in windows ``stride`` tokens apart (``"rolling"``; ``stride`` None: half the
      context), so that every token is scored;
    - ``packing``: ``"auto"`` (packed rows or length buckets, whichever the cost estimate
      prefers), ``"pack"`` or ``"buckets"``;
    - ``attention``: the attention path, ``"auto"`` or one of
      :data:`jaxmap.models.attention.PATHS`; ``logprob``: the log-prob kernel, one of
      :data:`LOGPROB_KERNELS`. Both choose how, not what, is computed;
    - ``logit_lens``: also score every layer's residual stream through the final norm and the
      unembedding;
    - ``keep_token_logprobs``: keep every scored token's log-prob (a job saves them with each
      model's row);
    - ``chat_template``: score each continuation as the assistant's reply to its context, through
      the tokenizer's chat template (:mod:`jaxmap.tokenization`);
    - ``pmi``: store log p(continuation | context) − log p(continuation), the pointwise mutual
      information, instead of the conditional log-likelihood.

    ``dtype``, ``bos_policy``, ``long_texts`` with ``stride``, ``chat_template`` and ``pmi`` are
    a store's settings (:attr:`store_settings`): they change the numbers.
    """

    dtype: str = DEFAULT_DTYPE
    bos_policy: str = "full"
    batch_tokens: int | None = None
    long_texts: str = "truncate"
    stride: int | None = None
    packing: str = "auto"
    attention: str = "auto"
    logprob: str = "fused"
    logit_lens: bool = False
    keep_token_logprobs: bool = False
    chat_template: bool = False
    pmi: bool = False

    def __post_init__(self) -> None:
        if self.bos_policy not in POLICIES:
            raise JaxmapError(f"unknown BOS policy {self.bos_policy!r}; choose one of {', '.join(POLICIES)}")
        if self.dtype not in DTYPES:
            raise JaxmapError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.long_texts not in LONG_TEXT_POLICIES:
            raise JaxmapError(
                f"unknown long-text policy {self.long_texts!r}; choose one of {', '.join(LONG_TEXT_POLICIES)}"
            )
        if self.packing not in PACKINGS:
            raise JaxmapError(f"unknown packing {self.packing!r}; choose one of {', '.join(PACKINGS)}")
        if self.stride is not None:
            if self.long_texts != "rolling":
                raise JaxmapError("stride applies to rolling windows: add long_texts='rolling' (--long-texts rolling)")
            if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
                raise JaxmapError(f"stride must be a positive number of tokens, got {self.stride!r}")
        if self.batch_tokens is not None and (
            not isinstance(self.batch_tokens, numbers.Integral) or isinstance(self.batch_tokens, bool)
            or self.batch_tokens < MIN_BUCKET
        ):
            raise JaxmapError(f"batch_tokens must be at least {MIN_BUCKET}, got {self.batch_tokens!r}")
        if self.attention not in ("auto", *ATTENTION_PATHS):
            raise JaxmapError(
                f"unknown attention path {self.attention!r}; choose auto or one of {', '.join(ATTENTION_PATHS)}"
            )
        if self.logprob not in LOGPROB_KERNELS:
            raise JaxmapError(
                f"unknown log-prob kernel {self.logprob!r}; choose one of {', '.join(LOGPROB_KERNELS)}"
            )
        if self.pmi:
            for name, flag in (
                ("logit_lens", "--logit-lens"), ("keep_token_logprobs", "--save-token-logprobs"),
                ("chat_template", "--chat-template"),
            ):
                if getattr(self, name):
                    raise JaxmapError(
                        f"pmi ({'--pmi'}) cannot be combined with {name} ({flag}): a PMI row is a "
                        "difference of two scores, which has no per-layer, per-token or chat form here"
                    )

    @classmethod
    def from_arguments(cls, caller: str, options: ScoringOptions | None, **keywords) -> ScoringOptions:
        """The options of a function that takes them whole (``options``) or as keywords named
        as the fields: ``options`` when given, else the options the keywords spell.

        With ``options``, a keyword left at its default is ignored; one that contradicts
        ``options`` raises, naming ``caller``, since either value may be the one meant.
        """
        if options is None:
            return cls(**keywords)
        defaults = {field.name: field.default for field in fields(cls)}
        clashing = [
            (name, value) for name, value in keywords.items()
            if value != defaults[name] and value != getattr(options, name)
        ]
        if clashing:
            given = ", ".join(f"{name}={value!r}" for name, value in clashing)
            held = ", ".join(f"{name}={getattr(options, name)!r}" for name, _ in clashing)
            raise JaxmapError(
                f"{caller}: the keyword(s) {given} contradict options ({held}); give each setting "
                "either as a keyword or in options"
            )
        return options

    @property
    def long_text_setting(self) -> str:
        """The store setting for the long-text policy: ``truncate``, ``rolling`` (the default
        stride) or ``rolling:stride=K``."""
        return f"rolling:stride={self.stride}" if self.stride is not None else self.long_texts

    @property
    def store_settings(self) -> dict[str, str]:
        """The settings a store's rows must share (:data:`jaxmap.store.SETTINGS`)."""
        settings = {"bos_policy": self.bos_policy, "dtype": self.dtype, "long_texts": self.long_text_setting}
        # Only where set, so that stores written before these existed keep their settings.
        if self.chat_template:
            settings["chat_template"] = "tokenizer"
        if self.pmi:
            settings["values"] = "pmi"
        return settings

    def check_mesh(self, mesh) -> None:
        """Raise :class:`JaxmapError` in one line if the kernels chosen cannot run on ``mesh``
        (a :class:`jax.sharding.Mesh`): the pallas kernels run on one device."""
        if mesh.size > 1 and "pallas" in (self.attention, self.logprob):
            raise JaxmapError(
                f"the pallas kernels run on one device and this mesh has {mesh.size}; "
                "choose other kernels, or a one-device mesh (--mesh data=1,model=1)"
            )

