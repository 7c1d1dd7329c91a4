"""Teacher-output cache: run the frozen teacher over the training set once, read it every epoch after.

With the teacher frozen and in eval mode (no dropout), what a method reads from it — the distillable
outputs (``Task.distill_targets``) and selected hidden states — is a function of the input alone. When
the method says so (:meth:`Method.cached_teacher_layers`) and the task's training inputs are fixed
(``Task.deterministic_inputs``: not so for on-the-fly MLM masking), the harness computes those signals
once per (teacher weights, task, tokenisation, data sha256, layers, dtype) into memory-mapped ``.npy``
files and serves them by example index; later epochs and later runs cost no teacher forward.

Per-token signals (hidden states, QA start/end logits) are stored padded to the longest training
example: a BERT padding position attends to real tokens only, so its state does not depend on how far
a batch is padded, and slicing a stored row to a batch's length gives what the live teacher computes
(up to float summation order; bit-identical when the batches are the same — see the tests).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from distillbench.atomic import write_json_atomic
from distillbench.cached import exclusive, lock_for, manifest, manifest_problem
from distillbench.errors import UserError
from distillbench.losses import TopKTeacher, top_k_teacher
from distillbench.method import EXAMPLE_INDEX, Method, Outputs

if TYPE_CHECKING:
    from datasets import Dataset

    from distillbench.config import RunConfig
    from distillbench.task import Task

# Storage dtype per setting; numpy has no bfloat16, so its 16 bits are stored as uint16 and viewed back.
CACHE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def to_storage(tensor: Tensor, dtype: str) -> np.ndarray:
    """``tensor`` rounded to the cache's storage dtype, as the numpy array that is written."""
    if dtype == "bfloat16":
        return tensor.detach().to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return tensor.detach().float().cpu().numpy().astype(CACHE_DTYPES[dtype])


def from_storage(array: np.ndarray, dtype: str) -> Tensor:
    """Stored rows back as float32 (the dtype every loss is computed in)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(array.astype(np.float32, copy=False))


@dataclass(frozen=True)
class CacheSpec:
    """What is cached: hidden-state indices (into ``hidden_states``), storage dtype, per-token outputs,
    and whether only the first position of each hidden state is read (a [CLS] head: 1/length the disk)."""

    layers: tuple[int, ...]
    dtype: str = "float32"
    per_token_distill: bool = False
    first_position_only: bool = False
    top_k: int = 0  # vocabulary logits: keep each position's top k log-probabilities at ``temperature``
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.dtype not in CACHE_DTYPES:
            raise UserError(f"teacher_cache_dtype must be one of {sorted(CACHE_DTYPES)}, got {self.dtype!r}")

    @property
    def needs_positions(self) -> bool:
        return bool(self.layers) or self.per_token_distill


class TeacherCache:
    """Memory-mapped teacher signals of one training set, looked up by ``example_index``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.distill = [np.load(folder / f"distill_{j}.npy", mmap_mode="r") for j in range(self.meta["distill"])]
        self.hidden = {int(i): np.load(folder / f"hidden_{i}.npy", mmap_mode="r") for i in self.meta["layers"]}
        self.per_token = self.meta["per_token_distill"]
        self.first_position_only = self.meta.get("first_position_only", False)
        self.dtype = self.meta["dtype"]
        self.top_k = self.meta.get("top_k", 0)
        count = self.meta["distill"] if self.top_k else 0
        self.top_k_index = [np.load(folder / f"top_k_index_{j}.npy", mmap_mode="r") for j in range(count)]
        self.top_k_rest = [np.load(folder / f"top_k_log_rest_{j}.npy", mmap_mode="r") for j in range(count)]

    def rows(self, array: np.ndarray, index: np.ndarray, length: int | None) -> Tensor:
        return from_storage(np.asarray(array[index] if length is None else array[index, :length]), self.dtype)

    def lookup(self, index: Tensor, length: int, device: torch.device) -> Outputs:
        """The teacher's :class:`Outputs` for these examples, cut to the batch's padded ``length``."""
        idx = index.cpu().numpy()
        if self.top_k:
            distill = [self.top_k_rows(j, idx, length, device) for j in range(len(self.distill))]
        else:
            distill = [self.rows(a, idx, length if self.per_token else None).to(device) for a in self.distill]
        count = self.meta["num_hidden_states"]
        hidden = tuple(
            self.rows(self.hidden[i], idx, None if self.first_position_only else length).to(device)
            if i in self.hidden
            else None
            for i in range(count)
        )
        return Outputs(raw=SimpleNamespace(hidden_states=hidden, loss=None), distill=distill)

    def top_k_rows(self, j: int, idx: np.ndarray, length: int, device: torch.device) -> TopKTeacher:
        """Distillable output ``j`` of these examples as the top-k lists it was cached as."""
        indices = torch.from_numpy(np.asarray(self.top_k_index[j][idx, :length]).astype(np.int64))
        log_rest = torch.from_numpy(np.asarray(self.top_k_rest[j][idx, :length]))
        log_probs = self.rows(self.distill[j], idx, length)
        return TopKTeacher(log_probs.to(device), indices.to(device), log_rest.to(device), self.meta["temperature"])

    @property
    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir())


def estimated_bytes(lengths: list[int], spec: CacheSpec, hidden_size: int) -> int:
    """Disk a cache of these rows will take (per-token signals dominate; class logits are ignored)."""
    positions = max(lengths, default=0)
    itemsize = np.dtype(CACHE_DTYPES[spec.dtype]).itemsize
    hidden = hidden_size * len(spec.layers) * (1 if spec.first_position_only else positions)
    if spec.top_k:  # per position: k log-probabilities, k int32 indices, one float32 log of the rest
        return len(lengths) * (hidden * itemsize + positions * (spec.top_k * (itemsize + 4) + 4))
    per_token = positions * (2 if spec.per_token_distill else 0)  # QA: start + end logits
    return len(lengths) * (hidden + per_token) * itemsize


def build_cache(
    folder: Path,
    teacher: nn.Module,
    train: Dataset,
    task: Any,
    tokenizer: Any,
    spec: CacheSpec,
    batch_size: int,
    show_progress: bool = True,
) -> TeacherCache:
    """Run the teacher over ``train`` (which carries ``example_index``) and write the cache atomically,
    under a lock (concurrent runs build it once); an existing cache is checked against its manifest and
    rebuilt when a file is missing, truncated or changed."""
    with exclusive(lock_for(folder)):
        if (folder / "meta.json").is_file():
            problem = cache_problem(folder)
            if problem is None:
                return TeacherCache(folder)
            print(f"teacher cache {folder.name}: {problem}; rebuilding", file=sys.stderr)
            shutil.rmtree(folder)
        return _write(folder, teacher, train, task, tokenizer, spec, batch_size, show_progress)


def cache_problem(folder: Path) -> str | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "meta.json is unreadable"
    return manifest_problem(folder, meta.get("manifest"))


def _write(folder: Path, teacher: nn.Module, train: Dataset, task: Any, tokenizer: Any, spec: CacheSpec,
           batch_size: int, show_progress: bool) -> TeacherCache:  # fmt: skip
    """The teacher pass itself, under :func:`build_cache`'s lock."""
    started = time.time()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    lengths = [len(ids) for ids in train["input_ids"]]
    max_length = max(lengths)
    if spec.needs_positions and len(set(lengths)) > 1:
        from transformers import DataCollatorWithPadding

        collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
    else:  # one length (a causal LM's blocks): nothing to pad
        collate = task.collator(tokenizer)
    arrays: dict[str, np.memmap] = {}
    rounding_error = 0.0
    device = next(teacher.parameters()).device
    teacher.eval()
    count = len(train)
    order = sorted(range(count), key=lengths.__getitem__)  # rows of similar length: little padding
    for start in tqdm(range(0, count, batch_size), desc="caching teacher outputs", disable=not show_progress):
        rows = [train[i] for i in order[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        index = batch.pop(EXAMPLE_INDEX).cpu().numpy()
        with torch.no_grad():
            raw = teacher(**batch, output_hidden_states=bool(spec.layers))
        targets = task.distill_targets(raw, batch)
        written: dict[str, np.ndarray] = {}  # this batch's rows of every file (top-k indices and rest: exact)
        if spec.top_k:
            tops = [top_k_teacher(t, spec.top_k, spec.temperature) for t in targets]
            targets = [top.log_probs for top in tops]
            for j, top in enumerate(tops):
                written[f"top_k_index_{j}"] = top.indices.to(torch.int32).cpu().numpy()
                written[f"top_k_log_rest_{j}"] = top.log_rest.float().cpu().numpy()
        values = {f"distill_{j}": t for j, t in enumerate(targets)}
        first = slice(0, 1) if spec.first_position_only else slice(None)
        values |= {f"hidden_{i}": raw.hidden_states[i][:, first] for i in spec.layers}
        for name, tensor in values.items():
            stored = to_storage(tensor, spec.dtype)
            error = (from_storage(stored, spec.dtype) - tensor.detach().float().cpu()).abs()
            rounding_error = max(rounding_error, float(error.max()) if error.numel() else 0.0)
            written[name] = stored
        for name, array in written.items():  # each file created on its first batch, rows by example index
            if name not in arrays:
                arrays[name] = np.lib.format.open_memmap(
                    partial / f"{name}.npy", mode="w+", dtype=array.dtype, shape=(count, *array.shape[1:])
                )
            arrays[name][index] = array
    for array in arrays.values():
        array.flush()
    distill_count = sum(name.startswith("distill_") for name in arrays)
    top_k = {"top_k": spec.top_k, "temperature": spec.temperature} if spec.top_k else {}
    num_hidden_states = getattr(teacher.config, "num_hidden_layers", 0) + 1
    meta = {
        "examples": count,
        "max_length": max_length,
        "distill": distill_count,
        "layers": list(spec.layers),
        "num_hidden_states": num_hidden_states,
        "dtype": spec.dtype,
        "per_token_distill": spec.per_token_distill,
        "first_position_only": spec.first_position_only,
        **top_k,
        "max_abs_rounding_error": rounding_error,
        "build_seconds": time.time() - started,
        "manifest": manifest(partial, skip=("meta.json",)),
    }
    write_json_atomic(partial / "meta.json", meta)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return TeacherCache(folder)


def with_index(train: Dataset) -> Dataset:
    """The training set with its row number as ``example_index`` (kept through subsetting/shuffling)."""
    return train.add_column(EXAMPLE_INDEX, list(range(len(train))))


# The policy: which runs read a cache, and when building one pays ----------------------------------
def cache_refusal(config: RunConfig, method: Method, task: Task) -> str | None:
    """Why this run cannot read its teacher from a cache (``None``: it can)."""
    if method.cached_teacher_layers() is None:
        return f"method {config.method} needs live teacher outputs"
    if not task.deterministic_inputs:
        return f"task {config.task} randomises its training inputs"
    if task.vocabulary_distill and not config.train.teacher_cache_top_k:
        return (
            f"task {config.task} distils a vocabulary of logits at every position, too large for the cache "
            "(--set teacher_cache_top_k=K caches the teacher's top K log-probabilities instead)"
        )
    return None


def check_teacher_cache(config: RunConfig, method: Method, task: Task) -> None:
    """Reject a bad ``teacher_cache`` setting before anything trains."""
    mode, top_k = config.train.teacher_cache, config.train.teacher_cache_top_k
    reason = cache_refusal(config, method, task) if method.uses_teacher else "the method uses no teacher"
    if mode == "on" and reason:
        raise UserError(f"--teacher-cache on: {reason}")
    if top_k:  # a different (approximate) objective, in the run key: it must really be read
        if not task.vocabulary_distill:
            raise UserError(f"--set teacher_cache_top_k: {config.task} does not distil a vocabulary (clm does)")
        if reason:
            raise UserError(f"--set teacher_cache_top_k: {reason}")
        if mode == "off":
            raise UserError("--set teacher_cache_top_k and --teacher-cache off: the top-k objective reads the cache")
