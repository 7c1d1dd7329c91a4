"""Build a student that tokenises differently from its teacher, for the cross-tokenizer KD evidence.

A WordPiece vocabulary (lower-cased) is trained on the task's own training text, and the student is the
teacher's encoder layers ``--layers`` (as ``--student-layer-ids`` would copy them) under new word
embeddings: each new token's embedding is the mean of the teacher's embeddings of that token's text as the
teacher tokenises it (``##`` continuation pieces by their text without the marks; special tokens by the
teacher's own). Position and token-type embeddings, the encoder blocks and the pooler are the teacher's.
So the student differs from the same-tokenizer student (teacher layers 1,3,5) in its tokenizer and word
embeddings alone.

    DISTILLBENCH_DATA=../shared/data python scripts/make_own_vocabulary_student.py \
        --task mrpc --layers 1,3,5 --vocab-size 8000 --out outputs/students/mrpc-wordpiece8k-minilm135
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import BertWordPieceTokenizer
from transformers import AutoModel, AutoTokenizer, BertTokenizer

from distillbench.families import keep_blocks
from distillbench.models import resolve_model
from distillbench.task import get_task, resolve_data_dir

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def training_text(task_name: str, data_dir: str | None) -> list[str]:
    task = get_task(task_name)(resolve_data_dir(data_dir), get_task(task_name).options_for({}))
    train = task.load()["train"]
    return [text for column in train.column_names if column.startswith("text") for text in train[column]]


def build_tokenizer(texts: list[str], vocab_size: int, folder: Path) -> BertTokenizer:
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS)
    tokenizer = BertTokenizer(vocab=wordpiece.get_vocab(), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def mean_teacher_embeddings(new: BertTokenizer, teacher: AutoTokenizer, table: torch.Tensor) -> torch.Tensor:
    rows = []
    for token, _ in sorted(new.get_vocab().items(), key=lambda item: item[1]):
        if token in SPECIALS:
            ids = [teacher.convert_tokens_to_ids(token)]
        else:
            ids = teacher(token.removeprefix("##"), add_special_tokens=False)["input_ids"] or [teacher.unk_token_id]
        rows.append(table[ids].mean(dim=0))
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--teacher", default="minilm-l6")
    parser.add_argument("--layers", default="1,3,5", help="teacher layers the student keeps (0-based)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--data-dir", help="default: $DISTILLBENCH_DATA")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    source = resolve_model(args.teacher)
    args.out.mkdir(parents=True, exist_ok=True)
    texts = training_text(args.task, args.data_dir)
    tokenizer = build_tokenizer(texts, args.vocab_size, args.out)
    teacher_tokenizer = AutoTokenizer.from_pretrained(source)
    model = keep_blocks(AutoModel.from_pretrained(source), tuple(int(i) for i in args.layers.split(",")))
    with torch.no_grad():
        table = model.get_input_embeddings().weight.detach().clone()
        rows = mean_teacher_embeddings(tokenizer, teacher_tokenizer, table)
        embeddings = torch.nn.Embedding.from_pretrained(rows, freeze=False, padding_idx=tokenizer.pad_token_id)
    model.set_input_embeddings(embeddings)
    model.config.vocab_size = len(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(args.out)
    provenance = {
        "task": args.task,
        "teacher": args.teacher,
        "layers": args.layers,
        "vocab_size": len(tokenizer),
        "training_texts": len(texts),
        "embedding_init": "mean of the teacher's embeddings of each token's text under the teacher's tokenizer",
    }
    (args.out / "distillbench_student.json").write_text(json.dumps(provenance, indent=1) + "\n")
    sample = texts[0]
    print(f"{args.out}: vocabulary {len(tokenizer)} (teacher {len(teacher_tokenizer)}), layers {args.layers}")
    print(f"  student: {tokenizer.tokenize(sample)[:16]}")
    print(f"  teacher: {teacher_tokenizer.tokenize(sample)[:16]}")


if __name__ == "__main__":
    main()
