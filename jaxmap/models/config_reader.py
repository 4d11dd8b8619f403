"""Strict reading of a Hugging Face config dict: :class:`ConfigReader` takes each field an adapter
understands, checks sizes and head counts as they are taken, and refuses by name every field
left over that could change a text's log-likelihood."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..errors import UnsupportedModelError

# Fields that do not change the log-likelihood of a text: bookkeeping, training-only settings
# (dropout, initialisation), generation defaults and token ids (handled by the tokenizer).
_NEUTRAL_FIELDS = frozenset(
    """
    _name_or_path architectures model_type transformers_version torch_dtype dtype use_cache
    initializer_range initializer_factor pad_token_id bos_token_id eos_token_id sep_token_id
    decoder_start_token_id attention_dropout hidden_dropout resid_pdrop embd_pdrop attn_pdrop
    classifier_dropout hidden_dropout_prob attention_probs_dropout_prob tokenizer_class
    output_attentions output_hidden_states return_dict use_return_dict id2label label2id
    problem_type task_specific_params chunk_size_feed_forward pruned_heads torchscript
    max_length min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty
    temperature top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size
    encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens prefix
    finetuning_task cross_attention_hidden_size add_cross_attention is_encoder_decoder
    tie_encoder_decoder is_decoder auto_map pretraining_tp summary_type summary_use_proj
    summary_activation summary_proj_to_labels summary_first_dropout use_bfloat16 tf_legacy_loss
    cache_implementation
    """.split()
)


# Sizes and counts: a value other than a positive integer is a broken config, not a variant.
_POSITIVE_INTEGERS = frozenset(
    """
    vocab_size hidden_size n_embd n_embed d_model word_embed_proj_dim num_hidden_layers n_layer
    n_layers num_layers num_attention_heads n_head n_heads num_heads attention_heads
    num_key_value_heads num_kv_heads head_dim intermediate_size n_inner ffn_dim ffn_hidden_size
    moe_intermediate_size shared_expert_intermediate_size num_experts num_local_experts
    num_experts_per_tok max_position_embeddings n_positions max_seq_len
    """.split()
)
# Scales that the decoder takes a power or a quotient of: a value other than a finite positive
# number is a broken config (Gemma 2 and 3 scale attention by query_pre_attn_scalar ** -0.5).
_POSITIVE_NUMBERS = frozenset(("query_pre_attn_scalar",))
# The architectures' spellings of the model width, the attention heads and the key/value heads:
# heads must divide the width (unless the config gives head_dim), key/value heads the heads.
_SHAPE_FIELDS = {
    "width": frozenset(("hidden_size", "n_embd", "n_embed", "d_model")),
    "heads": frozenset(("num_attention_heads", "n_head", "n_heads", "num_heads", "attention_heads")),
    "kv_heads": frozenset(("num_key_value_heads", "num_kv_heads")),
}


class ConfigReader:
    """Reads a Hugging Face config dict, tracking which fields the adapter understood.

    Values are checked as they are taken, before the adapter computes with them: a size that is
    not a positive integer, a scale that is not a positive number, heads that do not divide the width, and aliases that disagree are
    refused naming the fields and their values.
    """

    def __init__(self, config: dict, architecture: str) -> None:
        self.config = dict(config)
        self.architecture = architecture
        self._taken: set[str] = set()
        # _SHAPE_FIELDS role -> (field, value) of the ones taken so far.
        self._shape: dict[str, tuple[str, Any]] = {}

    def has(self, name: str) -> bool:
        """Whether the config gives ``name`` a value (null counts as absent); takes nothing."""
        return self.config.get(name) is not None

    def take(self, name: str, default: Any = ...) -> Any:
        """The field's value (``default`` when absent or null); missing without default fails."""
        self._taken.add(name)
        value = self.config.get(name)
        if value is None:
            if default is ...:
                raise UnsupportedModelError(
                    f"{self.architecture}: config field {name!r} is required but missing"
                )
            return default
        return self._checked(name, value)

    def take_first(self, names: Iterable[str], default: Any = ...) -> Any:
        """The value of a field that configs spell several ways (e.g. ``n_embd`` /
        ``hidden_size``, transformers' ``attribute_map``); where several are present they must
        agree."""
        names = list(names)
        for name in names:
            self._taken.add(name)
        present = [name for name in names if self.config.get(name) is not None]
        if not present:
            if default is ...:
                raise UnsupportedModelError(
                    f"{self.architecture}: config needs one of the fields {', '.join(names)}"
                )
            return default
        first = present[0]
        value = self._checked(first, self.config[first])
        for other in present[1:]:
            self.take_copy(other, first, value)
        return value

    def take_copy(self, name: str, source: str, value: Any) -> None:
        """Accept ``name``, a field that restates ``value``, the value jaxmap reads or derives
        from the field ``source`` (transformers writes both, e.g. Falcon's
        ``num_key_value_heads`` beside ``num_kv_heads``); a different value contradicts
        ``source`` and is refused naming both."""
        self._taken.add(name)
        saved = self.config.get(name)
        if saved is None or saved == value:
            return
        given = self.config.get(source)
        means = "" if given == value else f", which means {value!r}"
        raise UnsupportedModelError(
            f"{self.architecture}: config field {name!r} = {saved!r} contradicts "
            f"{source!r} = {given!r}{means}"
        )

    def _checked(self, name: str, value: Any) -> Any:
        """``value`` of field ``name``, after the checks of sizes and head counts."""
        if name in _POSITIVE_INTEGERS and (
            not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1
        ):
            raise UnsupportedModelError(
                f"{self.architecture}: config field {name!r} = {value!r} is not a positive integer"
            )
        if name in _POSITIVE_NUMBERS and not (
            isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and 0 < value < float("inf")
        ):
            raise UnsupportedModelError(
                f"{self.architecture}: config field {name!r} = {value!r} is not a positive number"
            )
        for role, names in _SHAPE_FIELDS.items():
            if name in names:
                self._shape[role] = (name, value)
        width, heads, kv_heads = (self._shape.get(role) for role in _SHAPE_FIELDS)
        if width and heads and not self.has("head_dim") and width[1] % heads[1]:
            raise self._indivisible(width, heads, "the attention heads must divide the width")
        if heads and kv_heads and heads[1] % kv_heads[1]:
            raise self._indivisible(
                heads, kv_heads, "the key/value heads must divide the attention heads"
            )
        return value

    def _indivisible(self, whole: tuple[str, Any], part: tuple[str, Any], why: str):
        return UnsupportedModelError(
            f"{self.architecture}: config fields {whole[0]!r} = {whole[1]!r} and "
            f"{part[0]!r} = {part[1]!r}: {why}"
        )

    def expect(self, name: str, allowed: Iterable[Any], default: Any = None) -> Any:
        """Take a field that jaxmap implements only for some values; refuse the others."""
        allowed = list(allowed)
        value = self.take(name, default)
        if value not in allowed:
            raise self.refuse(name, value, f"jaxmap implements only {allowed}")
        return value

    def refuse(self, name: str, value: Any, why: str = "") -> UnsupportedModelError:
        """The error (for the adapter to raise) naming field ``name``, its ``value`` and ``why``."""
        detail = f": {why}" if why else ""
        return UnsupportedModelError(
            f"{self.architecture}: unsupported config field {name!r} = {value!r}{detail}"
        )

    def finish(self) -> None:
        """Refuse, by name, every field nobody took that could change the model's output."""
        unknown = sorted(
            name
            for name, value in self.config.items()
            if name not in self._taken and name not in _NEUTRAL_FIELDS and value is not None
        )
        if unknown:
            shown = ", ".join(f"{name}={self.config[name]!r}" for name in unknown)
            raise UnsupportedModelError(
                f"{self.architecture}: config fields not implemented by jaxmap: {shown}"
            )
