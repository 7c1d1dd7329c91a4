"""Every method on every decoder family (task ``clm``), on tiny random causal LMs built here.

Teacher: 4 layers, width 32, 4 heads (Llama and Qwen with 2 K/V heads: grouped-query attention; Qwen3
with a head width of 16, so heads × head width ≠ hidden size). Students: a narrower, shallower model of
the same family with fewer heads, the same with equal heads (MiniLM v1), and teacher layers copied.
Loss terms are checked against computations that read the weights by their documented state-dict names
and expand grouped K/V heads and causal masks by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import (
    CAUSAL_LM_ONLY_METHODS,
    DECODER_CONFIGS,
    clm_run_args,
    make_text,
    make_tiny_decoder,
    make_tiny_model,
    model_zoo,
    tiny_run_args,
)
from distillbench import ModelPair, get_method, get_task, list_methods
from distillbench.cli import main
from distillbench.distiller import Distiller
from distillbench.families import FAMILIES
from distillbench.method import is_built_in
from distillbench.models import QKVCapture, StudentSpec, build_student

DECODERS = list(DECODER_CONFIGS)
BUILT_IN = ["finetune", "kd", "lwd", "minilm", "minilmv2", "ted"]
# every built-in method, the divergences and GKD included, plans on every decoder (the ones above also train)
EVERY_BUILT_IN = [m for m in list_methods() if is_built_in(m)]
KV_HEADS = {family: extra.get("num_key_value_heads") for family, (_, extra) in DECODER_CONFIGS.items()}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory):
    shapes = {"teacher": (4, 32, 4), "narrow": (2, 16, 2), "narrow-equal-heads": (2, 16, 4)}
    return model_zoo(tmp_path_factory.mktemp("decoders"), make_tiny_decoder, shapes)


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_text(tmp_path_factory.mktemp("decoder-text"))


def clm_args(teacher: Path, text: Path, method: str, tmp_path: Path, *extra: str) -> list[str]:
    folders = ["--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache")]
    return clm_run_args(teacher, text, method, *folders, *extra)


def student_record(tmp_path: Path) -> dict:
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*.json")]
    (record,) = [r for r in records if r["role"] != "teacher"]
    return record


def test_the_family_table_describes_every_tested_decoder_as_causal():
    assert set(DECODERS) <= set(FAMILIES)
    assert all(FAMILIES[family].causal for family in DECODERS)


@pytest.mark.parametrize("family", DECODERS)
def test_ted_runs_through_on_each_decoder_with_a_narrower_student(family, zoo, text, tmp_path):
    """TED, the method with the most stages (both LM fine-tunes, both filter stages with LM heads, the
    distillation), runs on each family with a narrower, shallower student with fewer heads."""
    args = clm_args(zoo(family, "teacher"), text, "ted", tmp_path, "--student", str(zoo(family, "narrow")))
    assert main(args) == 0
    record = student_record(tmp_path)
    assert record["status"] == "complete"
    assert {"teacher-finetune", "ted-filters-teacher", "student-finetune", "ted-filters-student"} <= set(
        record["stages"]
    )
    metrics = record["metrics"]
    assert math.isclose(metrics["perplexity"], math.exp(metrics["nll"]), rel_tol=1e-9)
    assert metrics["bits_per_byte"] > 0 and metrics["word_perplexity"] > metrics["perplexity"]
    assert record["model"]["student_architecture"]["hidden_size"] == 16
    assert all(math.isfinite(value) for value in record["loss_terms"].values())


@pytest.mark.parametrize("method", EVERY_BUILT_IN)
@pytest.mark.parametrize("family", DECODERS)
def test_every_method_plans_on_every_decoder(family, method, zoo, text, tmp_path, capsys):
    short = ["--set", "prompt_tokens=8", "--set", "max_new_tokens=8"] if method in CAUSAL_LM_ONLY_METHODS else []
    student = ["--student", str(zoo(family, "narrow"))]
    code = main(clm_args(zoo(family, "teacher"), text, method, tmp_path, *student, *short, "--dry-run"))
    captured = capsys.readouterr()
    if method == "minilm":
        assert code == 2 and "minilm needs equal attention head counts (student 2, teacher 4)" in captured.err
    else:
        assert code == 0 and f"({family}, 2 layers, width 16, 2 heads)" in captured.out
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("method", ["kd", "lwd", "minilm", "minilmv2"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_every_method_trains_a_student_of_copied_layers(family, method, zoo, text, tmp_path):
    assert main(clm_args(zoo(family, "teacher"), text, method, tmp_path, "--student-layer-ids", "1,3")) == 0
    record = student_record(tmp_path)
    assert record["status"] == "complete" and math.isfinite(record["metrics"]["perplexity"])


@pytest.mark.parametrize("family", DECODERS)
def test_gkd_samples_and_trains_on_every_decoder(family, zoo, text, tmp_path):
    """On-policy steps run ``generate`` with each family's own cache (grouped K/V heads, rotary positions)."""
    args = clm_args(zoo(family, "teacher"), text, "gkd", tmp_path, "--student-layer-ids", "1,3")
    assert main([*args, "--set", "lmbda=1", "--set", "prompt_tokens=8", "--set", "max_new_tokens=8"]) == 0
    record = student_record(tmp_path)
    assert record["status"] == "complete" and math.isfinite(record["metrics"]["perplexity"])
    assert record["budget"]["sampled_rows"] > 0


# The state-dict names of block i's pre-attention norm and Q/K/V weights, written out from each family's
# modelling code independently of distillbench's family table.
NORM = {
    "gpt2": "transformer.h.{i}.ln_1",
    "gpt_neox": "gpt_neox.layers.{i}.input_layernorm",
    "llama": "model.layers.{i}.input_layernorm",
    "qwen2": "model.layers.{i}.input_layernorm",
    "qwen3": "model.layers.{i}.input_layernorm",
}


def independent_qkv(model, family: str, ids: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Per block: the normalised block input times the documented Q/K/V weights, K/V heads repeated
    by hand for grouped-query attention (query head h reads K/V head h // (heads / K/V heads))."""
    config, weights = model.config, model.state_dict()
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
    heads = config.num_attention_heads
    width = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    found = []
    for i in range(config.num_hidden_layers):
        x, norm = states[i], NORM[family].format(i=i)
        if family in ("gpt2", "gpt_neox"):
            eps = config.layer_norm_epsilon if family == "gpt2" else config.layer_norm_eps
            x = F.layer_norm(x, x.shape[-1:], weights[norm + ".weight"], weights[norm + ".bias"], eps)
        else:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps) * weights[norm + ".weight"]
        if family == "gpt2":
            fused = (
                x @ weights[f"transformer.h.{i}.attn.c_attn.weight"] + weights[f"transformer.h.{i}.attn.c_attn.bias"]
            )
            q, k, v = (
                fused[..., : heads * width],
                fused[..., heads * width : 2 * heads * width],
                fused[..., 2 * heads * width :],
            )
        elif family == "gpt_neox":
            name = f"gpt_neox.layers.{i}.attention.query_key_value"
            fused = (x @ weights[name + ".weight"].T + weights[name + ".bias"]).view(*x.shape[:2], heads, 3, width)
            q, k, v = (fused[..., j, :].flatten(-2) for j in range(3))
        else:
            q, k, v = (project(x, weights, f"model.layers.{i}.self_attn.{part}_proj") for part in "qkv")
            group = heads // kv_heads
            k, v = (
                torch.cat([t[..., (h // group) * width : (h // group + 1) * width] for h in range(heads)], dim=-1)
                for t in (k, v)
            )
        found.append((q, k, v))
    return found


def project(x: torch.Tensor, weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """A linear projection by its state-dict weight (and bias, where the family has one)."""
    bias = weights.get(name + ".bias")
    return x @ weights[name + ".weight"].T + (0 if bias is None else bias)


def token_batch(folder: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer("the cat sat on the mat . the big red dog was not home today .")["input_ids"]
    other = tokenizer("a dog ran under the tree and the bird flew over the house today .")["input_ids"]
    length = min(len(ids), len(other), 12)
    return torch.tensor([ids[:length], other[:length]])


@pytest.mark.parametrize("family", DECODERS)
def test_qkv_capture_splits_fused_projections_and_repeats_grouped_heads(family, zoo):
    model = AutoModelForCausalLM.from_pretrained(str(zoo(family, "teacher"))).eval()
    capture = QKVCapture(model)
    ids = token_batch(zoo(family, "teacher"))
    expected = independent_qkv(model, family, ids)  # runs the model: the capture sees the same pass
    captured = capture.collect()
    assert len(captured) == 4
    for ours, theirs in zip(captured, expected, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    width = 4 * (16 if family == "qwen3" else 8)
    assert captured[0][1].shape[-1] == width  # K repeated up to the query heads' width
    if KV_HEADS[family]:
        assert captured[0][1].shape != model.state_dict()["model.layers.0.self_attn.k_proj.weight"].shape[:1]


def naive_causal_relation_kl(student: tuple, teacher: tuple, heads: int) -> torch.Tensor:
    """KL(teacher ‖ student) of softmax(A Bᵀ/√d) per example, head and query over keys ≤ the query."""
    total, count = torch.tensor(0.0, dtype=torch.float64), 0
    batch, length = student[0].shape[:2]
    for b in range(batch):
        for r in range(heads):
            for t in range(length):
                probs = []
                for left, right in (teacher, student):
                    d = left.shape[-1] // heads
                    a = left[b, t, r * d : (r + 1) * d].double()
                    c = right[b, : t + 1, r * d : (r + 1) * d].double()
                    probs.append(torch.softmax(c @ a / math.sqrt(d), dim=-1))
                p_teacher, p_student = probs
                total += (p_teacher * (p_teacher.log() - p_student.log())).sum()
                count += 1
    return total / count


def decoder_terms(method_name: str, family: str, zoo, student_shape: str, **hparams) -> tuple:
    """The method's loss terms through the real Distiller on one batch of blocks, with the models."""
    teacher_dir, student_dir = zoo(family, "teacher"), zoo(family, student_shape)
    task = get_task("clm")(None)
    teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir)).eval()
    student = AutoModelForCausalLM.from_pretrained(str(student_dir))
    method_cls = get_method(method_name)
    method = method_cls(method_cls.HParams(**hparams), task, ModelPair(student=student.config, teacher=teacher.config))
    torch.manual_seed(0)
    states = {
        stage.name: stage.build(teacher if stage.model == "teacher" else student, task).extra.state_dict()
        for stage in method.stages()
    }
    method.setup(states)
    distiller = Distiller(student, teacher, method, task)
    distiller.train()
    student.eval()
    ids = token_batch(student_dir)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    with torch.no_grad():
        terms = distiller(**batch)["terms"]
    return terms, method, student, teacher, ids


@pytest.mark.parametrize("family", DECODERS)
def test_lm_and_vocabulary_kd_terms_equal_an_independent_computation(family, zoo):
    """The task term is the next-token cross-entropy; KD's is α·T²·mean over positions of
    KL(teacher/T ‖ student/T) over the vocabulary."""
    terms, method, student, teacher, ids = decoder_terms("kd", family, zoo, "narrow", temperature=0.5)
    with torch.no_grad():
        s_logits, t_logits = student(ids).logits.double(), teacher(ids).logits.double()
    log_probs = torch.log_softmax(s_logits[:, :-1], -1)
    lm = -log_probs.gather(-1, ids[:, 1:, None]).mean()
    torch.testing.assert_close(terms["task"].double(), lm, rtol=1e-5, atol=1e-6)
    temperature = method.hp.temperature
    p = torch.softmax(t_logits / temperature, -1)
    kl = (p * (p.log() - torch.log_softmax(s_logits / temperature, -1))).sum(-1).mean()
    torch.testing.assert_close(terms["kd"].double(), method.hp.kl_alpha * temperature**2 * kl, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("family", DECODERS)
def test_minilm_causal_attention_and_value_relations_equal_an_independent_computation(family, zoo):
    terms, _method, student, teacher, ids = decoder_terms("minilm", family, zoo, "narrow-equal-heads")
    (s_q, s_k, s_v), (t_q, t_k, t_v) = (
        independent_qkv(student, family, ids)[-1],
        independent_qkv(teacher, family, ids)[-1],
    )
    expected = naive_causal_relation_kl((s_q, s_k), (t_q, t_k), 4) + naive_causal_relation_kl((s_v, s_v), (t_v, t_v), 4)
    torch.testing.assert_close(terms["relation"].double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", DECODERS)
def test_minilmv2_causal_self_relations_equal_an_independent_computation(family, zoo):
    terms, _method, student, teacher, ids = decoder_terms("minilmv2", family, zoo, "narrow", relation_heads=4)
    s_qkv, t_qkv = independent_qkv(student, family, ids)[-1], independent_qkv(teacher, family, ids)[-1]
    expected = sum(naive_causal_relation_kl((s, s), (t, t), 4) for s, t in zip(s_qkv, t_qkv, strict=True))
    torch.testing.assert_close(terms["relation"].double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["lwd", "ted"])
@pytest.mark.parametrize("family", DECODERS)
def test_hidden_state_terms_equal_an_independent_computation(method, family, zoo):
    terms, obj, student, teacher, ids = decoder_terms(method, family, zoo, "narrow", kl_alpha=0.0)
    with torch.no_grad():
        s_states = student(ids, output_hidden_states=True).hidden_states
        t_states = teacher(ids, output_hidden_states=True).hidden_states
        if method == "lwd":
            maps = [(obj.modules["projections"][i], i, m) for i, m in enumerate(obj.layer_map)]
            pairs = [(proj(s_states[i + 1]), t_states[m + 1]) for proj, i, m in maps]
        else:
            filters = zip(
                obj.student_layers,
                obj.teacher_layers,
                obj.modules["student_filters"],
                obj.modules["teacher_filters"],
                strict=True,
            )
            pairs = [(sf(s_states[s + 1]), tf(t_states[t + 1])) for s, t, sf, tf in filters]
    expected = obj.hp.mse_alpha * sum(((a - b) ** 2).mean() for a, b in pairs) / len(pairs)
    torch.testing.assert_close(terms["mse"], expected, rtol=1e-5, atol=1e-7)
    assert "kd" not in terms


@pytest.mark.parametrize("family", DECODERS)
def test_copied_decoder_blocks_are_the_teachers_and_generate(family, zoo):
    """Copied blocks keep the teacher's weights, and know their new position: the student generates
    with a cache (each attention layer's ``layer_idx`` indexes it)."""
    teacher_dir = str(zoo(family, "teacher"))
    student = build_student(StudentSpec("layers", layer_ids=(1, 3)), teacher_dir, "AutoModelForCausalLM", {}, False)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    ids = token_batch(zoo(family, "teacher"))
    for new, old in enumerate((1, 3)):
        block = NORM[family].rsplit(".", 1)[0]
        for name, tensor in student.state_dict().items():
            if name.startswith(block.format(i=new) + "."):
                torch.testing.assert_close(
                    tensor, teacher.state_dict()[block.format(i=old) + name.removeprefix(block.format(i=new))]
                )
    assert student.config.num_hidden_layers == 2
    generated = student.generate(ids[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 7)


def test_the_models_page_lists_every_decoder():
    page = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    assert all(f"`{family}`" in page for family in DECODERS)


# Bad input ----------------------------------------------------------------------------------------------
def one_error(capsys) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_an_encoder_teacher_on_clm_is_one_line(tiny_bert, text, tmp_path, capsys):
    assert main(clm_args(tiny_bert, text, "kd", tmp_path)) == 2
    assert "task clm needs a causal decoder model" in one_error(capsys)
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


def test_a_decoder_teacher_on_a_glue_task_is_one_line(zoo, glue_dir, tmp_path, capsys):
    args = tiny_run_args(zoo("gpt2", "teacher"), glue_dir, "kd", "mrpc", "--results-dir", str(tmp_path / "results"))
    assert main(args) == 2
    assert "task mrpc needs an encoder model, and" in one_error(capsys)
    assert not (tmp_path / "results").exists()


def test_a_decoder_teacher_with_an_encoder_student_is_one_line(zoo, text, tmp_path, capsys):
    student = make_tiny_model(tmp_path / "bert", "bert", 2, 16, 2)
    capsys.readouterr()
    assert main(clm_args(zoo("gpt2", "teacher"), text, "kd", tmp_path, "--student", str(student))) == 2
    line = one_error(capsys)
    assert "the teacher (gpt2) is a causal decoder and the student (bert) an encoder" in line


def test_a_block_longer_than_the_models_positions_is_one_line(zoo, text, tmp_path, capsys):
    assert main(clm_args(zoo("gpt2", "teacher"), text, "kd", tmp_path, "--set", "max_seq_length=256")) == 2
    assert "max_seq_length=256: the teacher has 128 positions" in one_error(capsys)


def test_a_student_with_another_vocabulary_is_one_line(zoo, text, tmp_path, capsys):
    """KD over the vocabulary compares next-token distributions word for word: one tokenizer."""
    from conftest import byte_level_tokenizer

    other = tmp_path / "other"
    make_tiny_decoder(other, "gpt2", 2, 16, 2)
    byte_level_tokenizer(other, size=280)
    capsys.readouterr()
    assert main(clm_args(zoo("gpt2", "teacher"), text, "kd", tmp_path, "--student", str(other))) == 2
    assert "clm's distilled outputs are per token; both must share one tokenizer" in one_error(capsys)


def test_teacher_cache_on_is_refused_for_vocabulary_logits(zoo, text, tmp_path, capsys):
    assert main(clm_args(zoo("gpt2", "teacher"), text, "kd", tmp_path, "--teacher-cache", "on")) == 2
    assert "distils a vocabulary of logits at every position" in one_error(capsys)
