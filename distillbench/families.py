"""Where each encoder family keeps its internals: one table, looked up by the model's own config.

Most methods read only what every Hugging Face model returns (logits, ``hidden_states``). A few read
inside it — MiniLM's query/key/value projections, layer copying (``--student-layer-ids``), TED's filter
activation, a task head's dropout — and those names differ per family: DistilBERT keeps its blocks
under ``transformer.layer`` and calls its projections ``q_lin``, DeBERTa-v2 (the class DeBERTa-v3 uses)
calls them ``query_proj``, DistilBERT's config names the activation ``activation``. Looking them up by
``config.model_type`` here, rather than matching module names by pattern, means a family nobody
described fails before anything is written, with one error naming the families that are described,
instead of training with hooks on the wrong modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from distillbench.errors import UserError

if TYPE_CHECKING:  # transformers takes seconds to import; `distillbench list` needs none of it
    from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class Family:
    """The internals of one encoder family, as paths below ``model.base_model`` and config fields."""

    label: str
    blocks: str  # the ModuleList of transformer blocks, below ``base_model``
    query: str  # the query/key/value projections (nn.Linear), below one block
    key: str
    value: str
    activation: str  # config field naming the feed-forward activation
    dropout: str  # config field of the hidden-state dropout probability
    norm_eps: str | float = "layer_norm_eps"  # config field of the LayerNorm epsilon, or its fixed value
    note: str = ""


_BERT_LIKE = {
    "blocks": "encoder.layer",
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "activation": "hidden_act",
    "dropout": "hidden_dropout_prob",
}

FAMILIES: dict[str, Family] = {
    "bert": Family("BERT (also MiniLM, TinyBERT)", **_BERT_LIKE),
    "roberta": Family("RoBERTa", **_BERT_LIKE),
    "electra": Family("ELECTRA", **_BERT_LIKE, note="the embedding projection is part of hidden state 0"),
    "deberta-v2": Family(
        "DeBERTa-v2 / DeBERTa-v3",
        blocks="encoder.layer",
        query="attention.self.query_proj",
        key="attention.self.key_proj",
        value="attention.self.value_proj",
        activation="hidden_act",
        dropout="hidden_dropout_prob",
        note="MiniLM relations use the content projections; relative-position terms are not distilled",
    ),
    "distilbert": Family(
        "DistilBERT",
        blocks="transformer.layer",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        activation="activation",
        dropout="dropout",
        norm_eps=1e-12,  # fixed in DistilBERT's modelling code, not a config field
        note="no token type ids",
    ),
}


def family_of(config: PretrainedConfig, needed_for: str) -> Family:
    """The family entry of a model, or one error naming what needs it and which families are described."""
    family = FAMILIES.get(getattr(config, "model_type", ""))
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        raise UserError(
            f"{needed_for} reads model internals, and model type {config.model_type!r} is not in "
            f"distillbench's family table (distillbench/families.py: {known})"
        )
    return family


def config_field(config: PretrainedConfig, field: str, what: str) -> object:
    """A config field named by the family table; configs of undescribed families are read by the common
    BERT name, which is the field's own name, not a guess at module structure."""
    family = FAMILIES.get(getattr(config, "model_type", ""))
    name = getattr(family, field) if family else _BERT_LIKE.get(field, Family.norm_eps)
    if not isinstance(name, str):
        return name
    if not hasattr(config, name):
        raise UserError(f"{what}: the {config.model_type!r} config has no {name!r} field")
    return getattr(config, name)


def activation(config: PretrainedConfig) -> str:
    """The feed-forward activation name (TED's non-linear filters use the model's own)."""
    return str(config_field(config, "activation", "the feed-forward activation"))


def hidden_dropout(config: PretrainedConfig) -> float:
    """The hidden-state dropout probability (task heads built beside the model use the model's own)."""
    return float(config_field(config, "dropout", "the hidden dropout"))  # type: ignore[arg-type]


def layer_norm_eps(config: PretrainedConfig) -> float:
    """The LayerNorm epsilon (an MLM head built beside the model normalises as the model does)."""
    return float(config_field(config, "norm_eps", "the LayerNorm epsilon"))  # type: ignore[arg-type]


def architecture(config: PretrainedConfig) -> dict[str, object]:
    """What a record says about a model's shape: the family and the sizes that decide which methods apply."""
    return {
        "model_type": config.model_type,
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
    }


def blocks(model: PreTrainedModel, needed_for: str = "layer copying") -> nn.ModuleList:
    """The model's transformer blocks, in order."""
    family = family_of(model.config, needed_for)
    found = model.base_model.get_submodule(family.blocks)
    if not isinstance(found, nn.ModuleList):
        raise UserError(f"{type(model).__name__}: {family.blocks} is not a list of blocks")
    return found


def keep_blocks(model: PreTrainedModel, layer_ids: tuple[int, ...]) -> PreTrainedModel:
    """Keep only the blocks ``layer_ids`` (in that order): a DistilBERT-style student from its teacher."""
    family = family_of(model.config, "layer copying")
    parent_path, _, attribute = family.blocks.rpartition(".")
    parent = model.base_model.get_submodule(parent_path) if parent_path else model.base_model
    setattr(parent, attribute, nn.ModuleList(blocks(model)[i] for i in layer_ids))
    model.config.num_hidden_layers = len(layer_ids)
    return model


def qkv_projections(model: PreTrainedModel) -> list[tuple[nn.Linear, nn.Linear, nn.Linear]]:
    """Per block, its (query, key, value) projection modules."""
    family = family_of(model.config, "Q/K/V capture")
    found = []
    for block in blocks(model, "Q/K/V capture"):
        parts = tuple(block.get_submodule(path) for path in (family.query, family.key, family.value))
        if not all(isinstance(part, nn.Linear) for part in parts):
            raise UserError(f"{type(model).__name__}: the {family.label} Q/K/V projections are not nn.Linear")
        found.append(parts)
    return found
