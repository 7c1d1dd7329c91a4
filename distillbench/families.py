"""Where each model family keeps its internals: one table, looked up by the model's own config.

Most methods read only what every Hugging Face model returns (logits, ``hidden_states``). A few read
inside it — MiniLM's query/key/value projections, layer copying (``--student-layer-ids``), TED's filter
activation, a task head's dropout — and those names differ per family: DistilBERT keeps its blocks
under ``transformer.layer`` and calls its projections ``q_lin``, DeBERTa-v2 (the class DeBERTa-v3 uses)
calls them ``query_proj``, DistilBERT's config names the activation ``activation``. Looking them up by
``config.model_type`` here, rather than matching module names by pattern, means a family nobody
described fails before anything is written, with one error naming the families that are described,
instead of training with hooks on the wrong modules.

Decoders (GPT-2, Llama, Qwen2/3, GPT-NeoX/Pythia) sit beside the encoders. Two of them fuse Q/K/V into
one projection (GPT-2's ``c_attn`` returns [Q | K | V]; GPT-NeoX's ``query_key_value`` returns, per head,
[q | k | v]), which the capture splits. Grouped-query attention (``num_key_value_heads`` <
``num_attention_heads``: Llama, Qwen) has fewer K/V heads than query heads; the capture repeats each K/V
head for the query heads of its group, as the model's own attention does (``repeat_kv``), so every
method sees one K and one V per query head. Rotary models (Llama, Qwen, GPT-NeoX) rotate Q and K after
the projection: relations computed from the captured projections are content relations, without the
position rotation (as DeBERTa's relative-position terms are left out), and Qwen3's per-head Q/K norms
are after the capture too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from distillbench.errors import UserError

if TYPE_CHECKING:  # transformers takes seconds to import; `distillbench list` needs none of it
    from transformers import PretrainedConfig, PreTrainedModel


QKV_LAYOUTS = ("separate", "thirds", "per_head")


@dataclass(frozen=True)
class Family:
    """The internals of one model family, as paths below ``model.base_model`` and config fields.

    ``qkv_layout``: ``separate`` — ``query``/``key``/``value`` are three projections; ``thirds`` —
    ``query`` is one fused projection whose output is [Q | K | V]; ``per_head`` — one fused projection
    whose output is, per attention head, [q | k | v]."""

    label: str
    blocks: str  # the ModuleList of transformer blocks, below ``base_model``
    query: str  # the query/key/value projections (nn.Linear or GPT-2's Conv1D), below one block
    key: str
    value: str
    activation: str  # config field naming the feed-forward activation
    dropout: str | float  # config field of the hidden-state dropout probability, or its fixed value
    norm_eps: str | float = "layer_norm_eps"  # config field of the LayerNorm epsilon, or its fixed value
    note: str = ""
    causal: bool = False  # a decoder: each position attends to itself and earlier positions only
    qkv_layout: str = "separate"


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
    "gpt2": Family(
        "GPT-2 (also DistilGPT2)",
        blocks="h",
        query="attn.c_attn",
        key="attn.c_attn",
        value="attn.c_attn",
        activation="activation_function",
        dropout="resid_pdrop",
        norm_eps="layer_norm_epsilon",
        causal=True,
        qkv_layout="thirds",
        note="Q/K/V from the fused c_attn",
    ),
    "gpt_neox": Family(
        "GPT-NeoX (Pythia)",
        blocks="layers",
        query="attention.query_key_value",
        key="attention.query_key_value",
        value="attention.query_key_value",
        activation="hidden_act",
        dropout="hidden_dropout",
        causal=True,
        qkv_layout="per_head",
        note="Q/K/V from the fused query_key_value; relations before the rotary embedding",
    ),
    **{
        model_type: Family(
            label,
            blocks="layers",
            query="self_attn.q_proj",
            key="self_attn.k_proj",
            value="self_attn.v_proj",
            activation="hidden_act",
            dropout=0.0,  # no hidden-state dropout in these families
            norm_eps="rms_norm_eps",
            causal=True,
            note=f"grouped-query K/V repeated per query head; relations before the rotary embedding{extra}",
        )
        for model_type, label, extra in (
            ("llama", "Llama", ""),
            ("qwen2", "Qwen2", ""),
            ("qwen3", "Qwen3", " and the Q/K norms"),
        )
    },
}


def described(config: PretrainedConfig) -> Family | None:
    """The family table's entry of a model, if its type is described."""
    return FAMILIES.get(getattr(config, "model_type", ""))


def family_of(config: PretrainedConfig, needed_for: str) -> Family:
    """The family entry of a model, or one error naming what needs it and which families are described."""
    family = described(config)
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        raise UserError(
            f"{needed_for} reads model internals, and model type {config.model_type!r} is not in "
            f"distillbench's family table (distillbench/families.py: {known})"
        )
    return family


def is_causal(config: PretrainedConfig) -> bool:
    """Whether a model is a causal decoder: by the family table, else by the config's own flag."""
    family = described(config)
    return family.causal if family else bool(getattr(config, "is_decoder", False))


def kind(config: PretrainedConfig) -> str:
    """``decoder`` or ``encoder``: what a task or a teacher/student pair is checked against."""
    return "decoder" if is_causal(config) else "encoder"


def head_dim(config: PretrainedConfig) -> int:
    """The width of one attention head (Qwen3 sets it apart from hidden_size / heads)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def attention_width(config: PretrainedConfig) -> int:
    """The width of the captured Q (and, after grouped K/V are repeated, of K and V): heads × head width."""
    return config.num_attention_heads * head_dim(config)


def config_field(config: PretrainedConfig, field: str, what: str) -> object:
    """A config field named by the family table; configs of undescribed families are read by the common
    BERT name, which is the field's own name, not a guess at module structure."""
    family = described(config)
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
    shape = {
        "model_type": config.model_type,
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
    }
    kv_heads = getattr(config, "num_key_value_heads", None)
    return shape | ({"num_key_value_heads": kv_heads} if kv_heads not in (None, config.num_attention_heads) else {})


def blocks(model: PreTrainedModel, needed_for: str = "layer copying") -> nn.ModuleList:
    """The model's transformer blocks, in order."""
    family = family_of(model.config, needed_for)
    found = model.base_model.get_submodule(family.blocks)
    if not isinstance(found, nn.ModuleList):
        raise UserError(f"{type(model).__name__}: {family.blocks} is not a list of blocks")
    return found


def keep_blocks(model: PreTrainedModel, layer_ids: tuple[int, ...]) -> PreTrainedModel:
    """Keep only the blocks ``layer_ids`` (in that order): a DistilBERT-style student from its teacher.

    A decoder's attention modules know their position (``layer_idx``: the slot of a generation cache)
    and some configs list a type per layer (``layer_types``); both follow the kept blocks."""
    family = family_of(model.config, "layer copying")
    config = model.config
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise UserError("layer copying: this GPT-2 config scales attention by the layer's index, which copying changes")
    parent_path, _, attribute = family.blocks.rpartition(".")
    parent = model.base_model.get_submodule(parent_path) if parent_path else model.base_model
    kept = nn.ModuleList(blocks(model)[i] for i in layer_ids)
    for position, block in enumerate(kept):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position
    setattr(parent, attribute, kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == config.num_hidden_layers:
        config.layer_types = [layer_types[i] for i in layer_ids]
    config.num_hidden_layers = len(layer_ids)
    return model


def qkv_projections(model: PreTrainedModel) -> list[tuple[nn.Module, ...]]:
    """Per block, its projection modules: (query, key, value), or the one fused projection."""
    from transformers.pytorch_utils import Conv1D

    family = family_of(model.config, "Q/K/V capture")
    paths = (family.query,) if family.qkv_layout != "separate" else (family.query, family.key, family.value)
    found = []
    for block in blocks(model, "Q/K/V capture"):
        parts = tuple(block.get_submodule(path) for path in paths)
        if not all(isinstance(part, nn.Linear | Conv1D) for part in parts):
            raise UserError(f"{type(model).__name__}: the {family.label} Q/K/V projections are not linear layers")
        found.append(parts)
    return found


def split_qkv(config: PretrainedConfig, outputs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """One block's captured projection output(s) → (Q, K, V), each [B, L, heads × head width], with
    grouped K/V heads repeated for the query heads of their group."""
    family = family_of(config, "Q/K/V capture")
    heads, width = config.num_attention_heads, head_dim(config)
    if family.qkv_layout == "thirds":
        query, key, value = outputs[0].split(heads * width, dim=-1)
    elif family.qkv_layout == "per_head":
        fused = outputs[0].unflatten(-1, (heads, 3 * width))
        query, key, value = (part.flatten(-2) for part in fused.chunk(3, dim=-1))
    else:
        query, key, value = outputs
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if kv_heads != heads:
        key, value = (x.unflatten(-1, (kv_heads, width)).repeat_interleave(heads // kv_heads, dim=-2).flatten(-2)
                      for x in (key, value))  # fmt: skip
    return query, key, value
