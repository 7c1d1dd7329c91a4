"""Tiny, self-made fixtures: a word-level BERT tokenizer, random 4-layer BERTs, GLUE-layout TSVs.

Nothing here needs ../shared or the hub, so the suite runs on a clean clone, CPU only.
"""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite's runs write their records to ./results of their own (temporary) working directory; the
# tests of the default workspace unset this.
os.environ.setdefault("DISTILLBENCH_RESULTS", "results")

EXAMPLE_PLUGINS = sorted((Path(__file__).resolve().parents[1] / "examples" / "plugins").glob("*.py"))


@pytest.fixture(scope="session")
def suite_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage and bootstrap cache for the whole session, never the user's own."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def away_from_the_checkout(tmp_path: Path, suite_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in a temporary working directory with the suite's cache: a run's default
    ``outputs/``, workspace and ``results`` never land in the user's checkout, nor its caches in theirs.
    ``--verbose`` sets an environment variable for the process: it ends with the test that passed it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTILLBENCH_CACHE", str(suite_cache))
    monkeypatch.setenv("DISTILLBENCH_VERBOSE", "")


def pytest_configure(config: pytest.Config) -> None:
    """The example file plug-ins join the registries, so every test parametrised over ``list_methods()``
    covers them as it covers the built-ins (no list to edit)."""
    from distillbench.plugins import load_plugin

    for path in EXAMPLE_PLUGINS:
        load_plugin(path)


WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "bird",
    "sat",
    "ran",
    "flew",
    "on",
    "under",
    "over",
    "mat",
    "tree",
    "roof",
    "red",
    "big",
    "small",
    "quick",
    "slow",
    "is",
    "was",
    "not",
    "and",
    "or",
    "but",
    "very",
    "today",
    "yesterday",
    "home",
    "park",
    "house",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MRPC_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
STSB_HEADER = [
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
]
PUNCT = ['"', ".", ",", "'", "?"]


def sentence(rng: random.Random, n: int | None = None) -> str:
    words = [rng.choice(WORDS) for _ in range(n or rng.randint(4, 12))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), '"')  # unbalanced quotes, as in real GLUE text
    return " ".join(words) + " ."


def write_tsv(path: Path, header: list[str] | None, rows: list[list[str]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(r) for r in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def make_glue(root: Path, seed: int = 0, train: int = 48, dev: int = 16) -> Path:
    """MRPC (BOM header), STS-B (regression), RTE (string labels), MNLI (two dev splits) and CoLA (no
    header) fixtures."""
    rng = random.Random(seed)
    glue = root / "glue"
    for split, n in (("train", train), ("dev", dev)):
        pairs = [(sentence(rng), sentence(rng)) for _ in range(n)]
        write_tsv(
            glue / "MRPC" / f"{split}.tsv",
            MRPC_HEADER,
            [[str(i % 2), str(i), str(i + 1), a, b] for i, (a, b) in enumerate(pairs)],
            bom=True,
        )
        write_tsv(
            glue / "STS-B" / f"{split}.tsv",
            STSB_HEADER,
            [[str(i), "g", "f", "y", "0", "s", "s", a, b, f"{(i * 0.37) % 5:.3f}"] for i, (a, b) in enumerate(pairs)],
        )
        write_tsv(
            glue / "RTE" / f"{split}.tsv",
            ["index", "sentence1", "sentence2", "label"],
            [[str(i), a, b, ("entailment", "not_entailment")[i % 2]] for i, (a, b) in enumerate(pairs)],
        )
        mnli_rows = [
            [str(i), "p", "q", "g", "", "", "", "", a, b, "x", ("entailment", "neutral", "contradiction")[i % 3]]
            for i, (a, b) in enumerate(pairs)
        ]
        mnli_header = [
            "index",
            "promptID",
            "pairID",
            "genre",
            "sentence1_binary_parse",
            "sentence2_binary_parse",
            "sentence1_parse",
            "sentence2_parse",
            "sentence1",
            "sentence2",
            "label1",
            "gold_label",
        ]
        names = ["train.tsv"] if split == "train" else ["dev_matched.tsv", "dev_mismatched.tsv"]
        for name in names:
            write_tsv(glue / "MNLI" / name, mnli_header, mnli_rows)
        write_tsv(glue / "CoLA" / f"{split}.tsv", None, [["src", str(i % 2), "", a] for i, (a, _) in enumerate(pairs)])
    return root


def make_squad(root: Path, seed: int = 0) -> Path:
    """SQuAD v1.1/v2.0 files in the official JSON layout: long contexts (several windows at length 48),
    several gold answers, and (v2.0) unanswerable questions."""
    rng = random.Random(seed)
    for version in ("1.1", "2.0"):
        for split, articles in (("train", 3), ("dev", 2)):
            data = []
            for a in range(articles):
                paragraphs = []
                for p in range(2):
                    words = [rng.choice(WORDS) for _ in range(70)]
                    context = " ".join(words) + " ."
                    qas = []
                    for q in range(3):
                        start_word = rng.randrange(0, 66)
                        answer = " ".join(words[start_word : start_word + rng.randint(1, 3)])
                        start = len(" ".join(words[:start_word])) + (1 if start_word else 0)
                        assert context[start : start + len(answer)] == answer
                        unanswerable = version == "2.0" and q == 2
                        answers = (
                            []
                            if unanswerable
                            else [{"text": answer, "answer_start": start}] * (1 if split == "train" else 2)
                        )
                        qas.append(
                            {
                                "id": f"{split}{a}{p}{q}",
                                "question": sentence(rng, 5),
                                "answers": answers,
                                **({"is_impossible": unanswerable} if version == "2.0" else {}),
                            }
                        )
                    paragraphs.append({"context": context, "qas": qas})
                data.append({"title": f"article {a}", "paragraphs": paragraphs})
            folder = root / "squad"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{split}-v{version}.json").write_text(json.dumps({"version": f"v{version}", "data": data}))
    return root


def make_tiny_bert(
    folder: Path,
    layers: int = 4,
    hidden: int = 32,
    heads: int = 4,
    dropout: float = 0.1,
    tokens: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """A random BERT backbone plus a WordPiece tokenizer over ``tokens`` (default: the word-level
    vocabulary), saved as a Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = {token: i for i, token in enumerate(tokens or SPECIALS + WORDS + PUNCT)}
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    return folder


FAMILY_CONFIGS = {
    # model type → (config class, backbone class, extra config fields, tokenizer returns token types)
    "bert": ("BertConfig", "BertModel", {}, True),
    "roberta": ("RobertaConfig", "RobertaModel", {"type_vocab_size": 1, "pad_token_id": 0}, False),
    "deberta-v2": (
        "DebertaV2Config",
        "DebertaV2Model",
        {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16, "pad_token_id": 0},
        True,
    ),
    "electra": ("ElectraConfig", "ElectraModel", {"embedding_size": 16}, True),
    "distilbert": ("DistilBertConfig", "DistilBertModel", {"pad_token_id": 0}, False),
}


def make_tiny_model(folder: Path, family: str, layers: int = 4, hidden: int = 32, heads: int = 4) -> Path:
    """A random backbone of one model family with the word-level tokenizer, saved as a Hugging Face
    folder. RoBERTa and DistilBERT tokenizers return no token type ids, as their real ones do."""
    import torch
    import transformers
    from transformers import BertTokenizer

    config_name, model_name, extra, token_types = FAMILY_CONFIGS[family]
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS + PUNCT)}
    names = ["input_ids", "token_type_ids", "attention_mask"] if token_types else ["input_ids", "attention_mask"]
    tokenizer = BertTokenizer(vocab=vocab, model_input_names=names)
    shape = {
        "vocab_size": len(vocab),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 128,
    }
    if family == "distilbert":
        shape = {"vocab_size": len(vocab), "dim": hidden, "n_layers": layers, "n_heads": heads}
        shape |= {"hidden_dim": 2 * hidden, "max_position_embeddings": 128}
    config = getattr(transformers, config_name)(**shape, **extra)
    torch.manual_seed(0)
    getattr(transformers, model_name)(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


DECODER_CONFIGS = {
    # model type → (config class, config fields beyond the shared shape)
    "gpt2": ("GPT2Config", {}),
    "llama": ("LlamaConfig", {"num_key_value_heads": 2}),  # grouped-query attention: 2 K/V heads for 4 query heads
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2}),
    "qwen3": ("Qwen3Config", {"num_key_value_heads": 2, "head_dim": 16}),  # heads × head width ≠ hidden size
    "gpt_neox": ("GPTNeoXConfig", {}),
}


def byte_level_tokenizer(folder: Path, size: int = 300):
    """A byte-level BPE tokenizer (GPT-2's kind) trained with ``tokenizers`` on the fixture words."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator([sentence(rng) for _ in range(300)], vocab_size=size, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=trainer._tokenizer, eos_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_tiny_decoder(folder: Path, family: str = "gpt2", layers: int = 4, hidden: int = 32, heads: int = 4) -> Path:
    """A random causal LM of one decoder family, with its LM head and a byte-level BPE tokenizer."""
    import torch
    import transformers

    config_name, extra = DECODER_CONFIGS[family]
    tokenizer = byte_level_tokenizer(folder)
    shape = {"vocab_size": len(tokenizer), "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": None}
    if family == "gpt2":
        shape |= {"n_embd": hidden, "n_layer": layers, "n_head": heads, "n_positions": 128}
    else:
        shape |= {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads}
        shape |= {"intermediate_size": 2 * hidden, "max_position_embeddings": 128}
    config = getattr(transformers, config_name)(**shape, **extra)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def make_text(root: Path, seed: int = 0) -> Path:
    """A data folder with raw training text and held-out text (the ``clm`` task's layout)."""
    rng = random.Random(seed)
    for name, lines in (("text/train.txt", 300), ("text/heldout.txt", 60)):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(sentence(rng, rng.randint(5, 20)) for _ in range(lines)) + "\n")
    return root


def model_zoo(root: Path, make, shapes: dict[str, tuple[int, int, int]]):
    """``zoo(family, shape)`` → a tiny model folder made by ``make(folder, family, layers, hidden, heads)``
    for one of the named ``shapes``, built once and reused."""

    @functools.cache
    def build(family: str, shape: str) -> Path:
        layers, hidden, heads = shapes[shape]
        return make(root / f"{family}-{shape}", family, layers, hidden, heads)

    return build


def make_tiny_bert_with_letters(folder: Path) -> Path:
    """A random 2-layer BERT whose tokenizer knows letters only (WordPiece splits every word into
    characters): a student that tokenises the same text differently from the word-level teacher."""
    letters = sorted({c for word in WORDS for c in word})
    tokens = SPECIALS + letters + [f"##{c}" for c in letters] + PUNCT
    return make_tiny_bert(folder, layers=2, tokens=tokens, seed=1)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_glue(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def squad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_squad(tmp_path_factory.mktemp("squad-data"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small raw-text corpus (about 5k tokens) for masked-LM runs."""
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(sentence(rng, rng.randint(5, 20)) for _ in range(400)) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_decoder(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_text(tmp_path_factory.mktemp("text-data"))


def clm_run_args(teacher: Path, text_dir: Path, method: str, *extra: str) -> list[str]:
    """CLI arguments of a few-step ``clm`` run on the tiny fixtures (blocks of 32 tokens)."""
    args = tiny_run_args(teacher, text_dir, method, "clm", "--set", "max_seq_length=32")
    return [*args, "--set", "corpus=text/train.txt", "--set", "heldout=text/heldout.txt", *extra]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's working directory (``away_from_the_checkout`` made it) with a stage cache of its own
    instead of the suite's, so its runs train every stage themselves."""
    monkeypatch.setenv("DISTILLBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


# Methods that run only on a causal-LM task: the tests run over every method on the tiny MRPC set leave
# them out, and tests/test_divergences.py runs them (end to end, seeded, against independent formulas).
CAUSAL_LM_ONLY_METHODS = ("gkd",)


def tiny_run_args(tiny_bert: Path, glue_dir: Path, method: str, task: str = "mrpc", *extra: str) -> list[str]:
    """CLI arguments of a few-step run on the tiny fixtures."""
    return [
        "run",
        "--method",
        method,
        "--task",
        task,
        "--teacher",
        str(tiny_bert),
        "--data-dir",
        str(glue_dir),
        "--max-steps",
        "3",
        "--set",
        "teacher_max_steps=3",
        "--set",
        "batch_size=8",
        "--set",
        "save_steps=2",
        "--set",
        "logging_steps=1",
        "--set",
        "eval_batch_size=16",
        "--no-progress",
        *extra,
    ]


def launch_cli(args: list[str], cwd: Path, cache: Path) -> subprocess.Popen:
    """``distillbench`` in a subprocess with its own stage cache, one CPU thread (so a kernel's summation
    order cannot depend on how loaded the machine is), stdout and stderr captured as text."""
    env = {**os.environ, "DISTILLBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "distillbench.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
