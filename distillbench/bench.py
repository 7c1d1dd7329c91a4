"""``distillbench bench``: what the harness costs over plain PyTorch, and what the teacher cache saves.

Everything runs in one process, on one fixed list of length-grouped batches of the real training set,
each phase from the same initial weights:

(a) a plain PyTorch KD loop (forward, KL, backward, clip, fused AdamW as the Trainer's default,
    linear schedule) vs the harness
    (``Distiller`` + ``DistillTrainer``) doing the same work → time ratio, goal ≤ 1.05;
(b) the harness's KD steps reading a teacher-output cache (built first, timed) vs running the teacher
    live vs the student-only fine-tune steps → cached KD steps should cost what the student alone costs;
(c) dev-set evaluation throughput of the harness vs ``transformers.Trainer.evaluate`` alone;
(d) the peak resident memory (CUDA: allocated memory) of each phase;
(e) a method stage on a frozen backbone (TED's Stage I) reading the backbone's states from an output
    cache vs running the backbone live, on the same batches;
(f) with ``--end-to-end``: whole ``distillbench run`` runs of the student-only baseline and of a staged
    method (TED) on the task's full training set and budget, the teacher's stage cached first, so
    the figure is what a campaign pays per seed.

The methods come from the registry: the baselines (``is_baseline``; the one without a teacher is the
student-only reference, the one with a teacher is logit KD) and the first method with a frozen-backbone
stage.

Speed does not depend on what the weights have learned, so the teacher is the pretrained model with a
seeded, untrained head: no fine-tuning stage runs. The first ``warmup`` steps of every phase are not
timed; the four training phases run in turn, ``rounds`` times, and each step counts with its fastest
round, which keeps transient noise of a shared machine out of the ratios.
"""

from __future__ import annotations

import copy
import itertools
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, get_linear_schedule_with_warmup, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler

from distillbench import provenance
from distillbench.atomic import write_json_atomic
from distillbench.bench_settings import BenchSettings
from distillbench.cached import stable_key
from distillbench.config import RunConfig, TrainConfig, build_train_config
from distillbench.distiller import Distiller
from distillbench.errors import UserError
from distillbench.harness import Runner
from distillbench.losses import top_k_teacher, vocabulary_kl
from distillbench.method import EXAMPLE_INDEX, Method, ModelPair, Stage, baseline_methods, get_method, list_methods
from distillbench.models import build_student, load_for_task, state_sha256
from distillbench.output_caches import OutputCaches
from distillbench.planning import Plan, plan_run
from distillbench.portable import portable_path
from distillbench.records import RECORD_VERSION
from distillbench.task import get_task
from distillbench.teacher_cache import TeacherCache
from distillbench.training import RunData, Training, quiet_logs
from distillbench.workspace import Paths

# The top-k cache sizes whose error and disk the bench reports for a vocabulary task.
TOP_K_REPORTED = (8, 32, 128)


def run_config(settings: BenchSettings, method: str, train: TrainConfig, teacher_seed: int | None) -> RunConfig:
    """The configuration of a ``distillbench run`` of ``method`` with the bench's task, teacher and seed."""
    return RunConfig(
        method=method,
        task=settings.task,
        teacher=settings.teacher,
        seed=settings.seed,
        teacher_seed=teacher_seed,
        data_dir=settings.data_dir,
        train=train,
    )


def on_policy_methods() -> list[str]:
    """Registered methods that distil on batches of their own drawing (the student's samples)."""
    return [name for name in list_methods() if get_method(name).distillation_batch is not Method.distillation_batch]


def bench_methods() -> tuple[str, str]:
    """(student-only baseline, logit-KD baseline) as the registered methods declare them."""
    baselines = baseline_methods()
    student_only = [m for m in baselines if not get_method(m).uses_teacher]
    with_teacher = [m for m in baselines if get_method(m).uses_teacher]
    if not student_only or not with_teacher:
        raise UserError("bench needs a baseline method without a teacher and one with a teacher (is_baseline)")
    return student_only[0], with_teacher[0]


class MemoryPeak:
    """Peak resident memory (MiB) while a block runs, sampled every 5 ms by a thread; on CUDA, the
    peak allocated device memory."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak_rss = self.start_rss = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    def __enter__(self) -> MemoryPeak:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, float]:
        mib = 2**20
        report = {"peak_rss_mib": self.peak_rss / mib, "peak_rss_growth_mib": (self.peak_rss - self.start_rss) / mib}
        if torch.cuda.is_available():
            report["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / mib
        return report


class StepClock(TrainerCallback):
    """Wall-clock time at the end of every optimizer step of a Trainer."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def step_seconds(times: list[float], start: float) -> list[float]:
    """Duration of every step from the wall-clock marks at their ends (``start``: before step 1)."""
    marks = [start, *times]
    return [b - a for a, b in itertools.pairwise(marks)]


def seconds_per_step(rounds: list[list[float]], warmup: int) -> float:
    """Mean over the steps after the first ``warmup`` of each step's fastest round: every round runs
    the same batches, so a step slowed by a transient hiccup in one round is timed by another."""
    fastest = [min(times) for times in zip(*rounds, strict=True)]
    timed = fastest[warmup:]
    return sum(timed) / len(timed)


class IndexBatches(Dataset):
    """One item per batch (a list of row indices): the Trainer then sees exactly the given batches."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list[int]:
        return self.batches[i]


class Bench:
    """Builds the shared pieces once (data, batches, models) and times each phase on them."""

    def __init__(self, settings: BenchSettings, cache_dir: Path) -> None:
        self.settings = settings
        train = TrainConfig(
            learning_rate=get_task(settings.task).train_defaults.get("learning_rate", TrainConfig.learning_rate),
            batch_size=settings.batch_size,
            max_steps=settings.steps or -1,
            epochs=1,
            max_seq_length=settings.max_seq_length,
            logging_steps=20,
            save_steps=10**9,
            teacher_cache="on",
            teacher_cache_top_k=settings.top_k if get_task(settings.task).vocabulary_distill else 0,
            bf16=settings.bf16,
        )
        self.student_only, self.kd = bench_methods()
        config = run_config(settings, self.kd, train, teacher_seed=None)
        self.plan = plan_run(config, Paths(cache_dir=cache_dir, show_progress=False))
        self.data = RunData(self.plan)
        self.training = Training(self.plan, self.data)
        self.caches = OutputCaches(self.plan, self.data)
        self.task = self.plan.task
        self.train_rows = self.data.train_split(None, indexed=True)
        self.collate_rows = self.task.collator(self.data.tokenizer)
        self.batches = self._batches()
        set_seed(settings.seed)
        # The Trainer places its models on the accelerator; the plain loop and the cache build use these
        # copies, so they start there too.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        teacher = load_for_task(self.plan.teacher_source, self.task.model_class, self.task.model_kwargs(), False)
        self.teacher = teacher.to(self.device).eval()
        self.initial_student = build_student(
            self.plan.student_spec, self.plan.teacher_source, self.task.model_class, self.task.model_kwargs(), False
        ).to(self.device)

    def _batches(self) -> list[list[int]]:
        """The harness's default order: length-grouped batches of a seeded shuffle."""
        lengths = [len(ids) for ids in self.train_rows["input_ids"]]
        generator = torch.Generator().manual_seed(self.settings.seed)
        order = list(LengthGroupedSampler(self.settings.batch_size, lengths=lengths, generator=generator))
        size = self.settings.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        if len(batches) < self.settings.steps:
            raise UserError(f"bench: {self.settings.task} has only {len(batches)} batches of {size}")
        return batches[: self.settings.steps or None]

    def collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        return self.collate_rows([self.train_rows[i] for i in rows])

    def method(self, name: str, setup: bool = True) -> Method:
        method_cls = get_method(name)
        hp = method_cls.hparams_for(self.settings.task, {})
        method = method_cls(hp, self.task, ModelPair(self.initial_student.config, self.teacher.config))
        method.check_sequence_length(self.settings.max_seq_length)
        if setup:
            method.setup({})
        return method

    def frozen_stage(self) -> tuple[str, Stage] | None:
        """The first registered method's stage that trains on the frozen student (TED's Stage I)."""
        for name in list_methods():
            try:
                method = self.method(name, setup=False)
            except UserError:
                continue  # a method this teacher/student pair cannot run
            stage = next((s for s in method.stages() if s.frozen_layers is not None and s.model == "student"), None)
            if stage is not None:
                return name, stage
        return None

    # (a) plain PyTorch -------------------------------------------------------------------------
    def plain_kd(self) -> dict[str, Any]:
        """KD written directly in PyTorch: the reference the harness's overhead is measured against."""
        hp = self.method(self.kd).hp
        student = copy.deepcopy(self.initial_student).train()
        lr = self.plan.config.train.learning_rate
        optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, fused=True)  # as the Trainer
        schedule = get_linear_schedule_with_warmup(optimizer, 0, len(self.batches))
        times: list[float] = []
        losses: list[float] = []
        autocast = torch.autocast(self.device.type, torch.bfloat16, enabled=self.settings.bf16)
        start = time.perf_counter()
        for rows in self.batches:
            batch = {k: v.to(self.device) for k, v in self.collate(rows).items() if k != EXAMPLE_INDEX}
            with autocast:
                outputs = student(**batch)
                with torch.no_grad():
                    teacher_logits = self.teacher(**batch).logits
            if self.task.vocabulary_distill:  # next-token distributions: the chunked KL, as the harness
                soft = vocabulary_kl(outputs.logits, teacher_logits, hp.temperature)
            else:
                s, t = outputs.logits.float() / hp.temperature, teacher_logits.float() / hp.temperature
                soft = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean") * hp.temperature**2
            loss = outputs.loss + hp.kl_alpha * soft
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            times.append(time.perf_counter())
        return {
            "step_seconds": step_seconds(times, start),
            "mean_train_loss": sum(losses) / len(losses),
        }

    # (a), (b) the harness -----------------------------------------------------------------------
    def harness(self, method_name: str, cache: TeacherCache | None, out_dir: Path) -> dict[str, Any]:
        """The Trainer path of ``distillbench run`` on the fixed batches."""
        student = copy.deepcopy(self.initial_student)
        method = self.method(method_name)
        teacher = self.teacher if method.uses_teacher else None
        return self.timed_training(Distiller(student, teacher, method, self.task, cache), out_dir)

    def on_policy(self, method_name: str, sample: bool, out_dir: Path) -> dict[str, Any]:
        """An on-policy method's steps with a live teacher: drawing its distillation batches (the student's
        samples, each call timed) or, with ``sample`` False, never (its off-policy counterpart)."""
        student = copy.deepcopy(self.initial_student)
        method = self.method(method_name)
        draw, sampling = method.distillation_batch, []

        def timed_draw(batch: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
            started = time.perf_counter()
            drawn = draw(batch, model)
            if drawn is not None:
                sampling.append(time.perf_counter() - started)
            return drawn

        method.distillation_batch = timed_draw if sample else lambda batch, model: None
        timing = self.timed_training(Distiller(student, self.teacher, method, self.task), out_dir)
        return timing | {"sampling_seconds": sampling}

    def stage_one(self, stage: Stage, features: TeacherCache | None, out_dir: Path) -> dict[str, Any]:
        """A frozen-backbone stage's steps on the fixed batches, the backbone's states from ``features``
        (an output cache) or, with ``None``, from the live backbone."""
        set_seed(self.settings.seed)
        module = stage.build(copy.deepcopy(self.initial_student), self.task)
        module.features = features
        return self.timed_training(module, out_dir)

    def timed_training(self, module: torch.nn.Module, out_dir: Path) -> dict[str, Any]:
        """Train ``module`` with the harness's Trainer on the fixed batches, timing every step."""
        args = self.training.arguments(out_dir, self.plan.config.train, evaluate=False)
        args = replace(args, per_device_train_batch_size=1, train_sampling_strategy="sequential", disable_tqdm=True)
        clock = StepClock()
        trainer = self.training.trainer(
            module, args, IndexBatches(self.batches), data_collator=lambda items: self.collate(items[0])
        )
        trainer.add_callback(clock)
        start = time.perf_counter()
        trainer.train()
        return {
            "step_seconds": step_seconds(clock.times, start),
            "mean_train_loss": trainer.state.log_history[-1]["train_loss"],
        }

    def top_k_errors(self, ks: tuple[int, ...] = TOP_K_REPORTED) -> list[dict[str, Any]]:
        """KD from a top-k cache vs from the live teacher on the bench's batches: the mean loss each gives,
        their relative gap, and the cache's bytes per token (float16 values, int32 indices, float32 leftover
        mass) — for the untrained student (where KD starts) and, given ``top_k_student``, a trained one, at
        the KD temperature and at T = 1."""
        students = {"untrained": copy.deepcopy(self.initial_student)}
        if self.settings.top_k_student:
            students["trained"] = load_for_task(
                self.settings.top_k_student, self.task.model_class, self.task.model_kwargs(), False
            ).to(self.device)
        temperatures = sorted({self.method(self.kd).hp.temperature, 1.0}, reverse=True)
        found = []
        for label, student in students.items():
            pairs = self._logit_pairs(student.eval())
            for temperature in temperatures:
                live = sum(float(vocabulary_kl(s, t, temperature)) for s, t in pairs) / len(pairs)
                for k in (k for k in ks if k < self.teacher.config.vocab_size):
                    cached = sum(
                        float(vocabulary_kl(s, top_k_teacher(t, k, temperature), temperature)) for s, t in pairs
                    ) / len(pairs)
                    found.append(
                        {
                            "student": label,
                            "temperature": temperature,
                            "k": k,
                            "bytes_per_token": k * (2 + 4) + 4,
                            "kd_live": live,
                            "kd_top_k": cached,
                            "relative_error": (live - cached) / live if live > 0 else 0.0,  # 0 ≤ cached ≤ live
                        }
                    )
        return found

    def _logit_pairs(self, student: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(student, teacher) logits of every bench batch."""
        pairs = []
        with torch.no_grad():
            for rows in self.batches:
                batch = {k: v.to(self.device) for k, v in self.collate(rows).items() if k != EXAMPLE_INDEX}
                pairs.append((student(**batch).logits, self.teacher(**batch).logits))
        return pairs

    # (c) evaluation ----------------------------------------------------------------------------
    def evaluation(self, out_dir: Path) -> dict[str, Any]:
        """Dev-set examples per second: the harness's evaluate vs a bare ``Trainer.evaluate``."""
        student = copy.deepcopy(self.initial_student)
        args = self.training.arguments(out_dir, self.plan.config.train, evaluate=False)
        # Both in dataset order: the harness never length-groups evaluation, a bare Trainer would.
        args = replace(args, disable_tqdm=True, train_sampling_strategy="random")
        harness = self.training.trainer(Distiller(student, None, self.method(self.student_only), self.task), args, None)
        bare = Trainer(
            model=student,
            args=args,
            eval_dataset=self.data.eval_data(),
            data_collator=self.task.collator(self.data.tokenizer),
        )
        quiet_logs(bare)  # its metrics dict is not the user's to read
        examples = len(self.data.eval_data())
        result: dict[str, Any] = {"examples": examples}
        for name, trainer in (("harness", harness), ("trainer_evaluate", bare)):
            with MemoryPeak() as memory:
                best = min(timed(trainer.evaluate) for _ in range(self.settings.rounds))
            result[name] = {"examples_per_second": examples / best, "seconds": best, **memory.report()}
        return result


# (g) the vocabulary KL's memory ---------------------------------------------------------------------
# The high-water mark of this process's resident memory: /proc's VmHWM belongs to the address space, which a
# new process starts afresh (getrusage's ru_maxrss survives exec on Linux: a child of a large process would
# start at its parent's peak).
PEAK_SCRIPT = """
import resource, sys, torch, torch.nn.functional as F
from distillbench.divergences import token_divergence
from distillbench.losses import soft_kl, vocabulary_kl

def high_water_bytes():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

rows, vocabulary, which = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
student = torch.randn(rows, vocabulary, requires_grad=True)
teacher, labels = torch.randn(rows, vocabulary), torch.randint(0, vocabulary, (rows,))
before = high_water_bytes()
loss = {"lm_loss": lambda: F.cross_entropy(student, labels), "kd": lambda: vocabulary_kl(student, teacher, 2.0),
        "unchunked_kd": lambda: soft_kl(student, teacher, 2.0), "jsd": lambda: token_divergence(student, teacher, "jsd")
        }[which]()
loss.backward()
print((high_water_bytes() - before) / (rows * vocabulary * 4))
"""


def vocabulary_loss_peaks(
    rows: int, vocabulary: int, losses: tuple[str, ...] = ("lm_loss", "kd", "unchunked_kd")
) -> dict[str, float]:
    """Peak memory of forward + backward of each of ``losses`` (the LM loss, the chunked vocabulary KD, the
    unchunked KL, the chunked JSD) on the same [rows, vocabulary] logits, each in a fresh process (the
    CPU's high-water mark of resident memory), in logits-sized buffers beyond the logits themselves."""
    import subprocess
    import sys

    # glibc raises its mmap threshold after each large free (up to 32 MB), and chunk-sized blocks below it
    # then stay in the heap when freed: resident memory would count every chunk's freed temporaries. A
    # fixed threshold returns them, so the high-water mark measures the tensors alive at once.
    environment = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}

    def peak(which: str) -> float:
        command = [sys.executable, "-c", PEAK_SCRIPT, str(rows), str(vocabulary), which]
        run = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
        return float(run.stdout)

    return {"rows": rows, "vocabulary": vocabulary} | {w: peak(w) for w in losses}


# The issue's memory setting: blocks of 512 tokens, batch 8, GPT-2's vocabulary.
VOCABULARY_MEMORY_SHAPE = (8 * 512, 50257)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextmanager
def phase(results: dict[str, Any], name: str, echo: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """Collect one phase's figures and its memory peak under ``results[name]``."""
    echo(f"bench: {name} …")
    entry: dict[str, Any] = {}
    with MemoryPeak() as memory:
        yield entry
    entry.update(memory.report())
    results.setdefault(name, []).append(entry)


def on_policy_summary(raw: dict[str, list[dict[str, Any]]], name: str, method: Method) -> dict[str, Any]:
    """An on-policy method's step time against its off-policy counterpart's (the same method never drawing
    samples), and the share of its training time spent drawing them (``model.generate``), over all rounds."""
    on, off = raw[f"{name}_on_policy"], raw[f"{name}_off_policy"]
    on_seconds = sum(sum(entry["step_seconds"]) for entry in on)
    off_seconds = sum(sum(entry["step_seconds"]) for entry in off)
    sampling = [s for entry in on for s in entry["sampling_seconds"]]
    return {
        "hparams": asdict(method.hp),
        "steps": sum(len(entry["step_seconds"]) for entry in on),
        "sampled_steps": len(sampling),
        "on_vs_off_policy_step": on_seconds / off_seconds,
        "sampling_share": sum(sampling) / on_seconds,
    }


def summarise(entries: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """A phase over its rounds: per-step best time, each round's mean, the largest memory peak."""
    rounds = [e["step_seconds"] for e in entries]
    return {
        "seconds_per_step": seconds_per_step(rounds, warmup),
        "rounds_seconds_per_step": [seconds_per_step([r], warmup) for r in rounds],
        "mean_train_loss": entries[0]["mean_train_loss"],
        "peak_rss_mib": max(e["peak_rss_mib"] for e in entries),
        "peak_rss_growth_mib": max(e["peak_rss_growth_mib"] for e in entries),
        "step_seconds": rounds,
    }


def recorded_settings(settings: BenchSettings, plan: Plan) -> dict[str, Any]:
    """The settings as a record stores them: a data folder given by path named portably (``data:.``), as run
    records name their files, never by this machine's path."""
    values = asdict(settings)
    for key in ("data_dir", "top_k_student"):
        if values[key]:
            values[key] = portable_path(values[key], plan.roots)
    return values


def run_bench(settings: BenchSettings, results_dir: Path, cache_dir: Path, echo: Callable[[str], None] = print) -> dict:
    """Run every phase and write ``results/bench/<task>-<key>.json``; returns the record."""
    started = time.time()
    bench = Bench(settings, cache_dir)
    scratch = cache_dir / "bench-output"
    cache_started = time.perf_counter()
    with MemoryPeak() as memory:
        cache = bench.caches.for_teacher(bench.teacher, {"key": state_sha256(bench.teacher)})
    assert cache is not None
    cache_info = {
        "build_seconds_this_process": time.perf_counter() - cache_started,
        "disk_mib": cache.disk_bytes / 2**20,
        **cache.meta,
        **memory.report(),
    }
    contenders: dict[str, Callable[[], dict[str, Any]]] = {
        "plain_kd": bench.plain_kd,
        "harness_kd_live": lambda: bench.harness(bench.kd, None, scratch),
        "harness_kd_cached": lambda: bench.harness(bench.kd, cache, scratch),
        "harness_finetune": lambda: bench.harness(bench.student_only, None, scratch),
    }
    staged = bench.frozen_stage()
    if staged is not None:
        _, stage = staged
        cfg = bench.plan.config.train
        first_only = bench.task.head_reads_first_position
        model_key = state_sha256(bench.initial_student)
        features = bench.caches.build(bench.initial_student, model_key, stage.frozen_layers or (), cfg, first_only)
        contenders["stage_one_live"] = lambda: bench.stage_one(stage, None, scratch)
        contenders["stage_one_cached"] = lambda: bench.stage_one(stage, features, scratch)
    on_policy = []
    for name in on_policy_methods():
        try:
            bench.method(name, setup=False)
        except UserError:
            continue  # a method this task or pair cannot run (on-policy sampling needs a causal LM)
        on_policy.append(name)
        contenders[f"{name}_on_policy"] = lambda name=name: bench.on_policy(name, True, scratch)
        contenders[f"{name}_off_policy"] = lambda name=name: bench.on_policy(name, False, scratch)
    raw: dict[str, list[dict[str, Any]]] = {}
    for _ in range(settings.rounds):
        for name, contender in contenders.items():
            with phase(raw, name, echo) as entry:
                entry.update(contender())
    phases = {name: summarise(entries, settings.warmup) for name, entries in raw.items()}
    step = {name: p["seconds_per_step"] for name, p in phases.items()}
    evaluation = bench.evaluation(scratch)
    memory = vocabulary_loss_peaks(*VOCABULARY_MEMORY_SHAPE) if bench.task.vocabulary_distill else None
    top_k = bench.top_k_errors() if bench.task.vocabulary_distill else None
    end_to_end = None
    if settings.end_to_end_epochs and staged is not None:
        end_to_end = whole_runs(settings, [bench.student_only, staged[0]], cache_dir, scratch, echo)
    record = {
        "kind": "bench",
        "version": RECORD_VERSION,
        "settings": recorded_settings(settings, bench.plan),
        "teacher_source": bench.plan.identity(bench.plan.teacher_source),
        "student": bench.plan.student_spec.describe(),
        "train_examples": len(bench.train_rows),
        "batch_padded_lengths": [int(bench.collate(rows)["input_ids"].shape[1]) for rows in bench.batches],
        "phases": phases,
        "ratios": {
            "harness_vs_plain_kd": step["harness_kd_live"] / step["plain_kd"],
            "cached_kd_vs_student_only": step["harness_kd_cached"] / step["harness_finetune"],
            "live_kd_vs_student_only": step["harness_kd_live"] / step["harness_finetune"],
            "cached_vs_live_kd": step["harness_kd_cached"] / step["harness_kd_live"],
            "eval_harness_vs_trainer": evaluation["harness"]["examples_per_second"]
            / evaluation["trainer_evaluate"]["examples_per_second"],
            **({"stage_one_cached_vs_live": step["stage_one_cached"] / step["stage_one_live"]} if staged else {}),
            **({"vocabulary_kd_vs_lm_loss_memory": memory["kd"] / memory["lm_loss"]} if memory else {}),
        },
        "on_policy": {name: on_policy_summary(raw, name, bench.method(name, setup=False)) for name in on_policy},
        "vocabulary_loss_memory": memory,
        "top_k_cache": top_k,
        "methods": {
            "student_only": bench.student_only,
            "kd": bench.kd,
            **({"stage_one": f"{staged[0]}: {staged[1].name}"} if staged else {}),
        },
        "teacher_cache": cache_info,
        "end_to_end": end_to_end,
        "evaluation": evaluation,
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "data_sha256": bench.plan.data_sha256,
        "git": provenance.git_state(),
        "packages": provenance.package_versions(),
        "hardware": provenance.hardware(),
        "wall_time_s": time.time() - started,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    key = stable_key({"settings": record["settings"], "finished_at": record["finished_at"]})
    path = results_dir / "bench" / f"{settings.task}-{record['device']}-{key}.json"
    write_json_atomic(path, record)
    return record | {"_path": str(path)}


def whole_runs(
    settings: BenchSettings, methods: list[str], cache_dir: Path, scratch: Path, echo: Callable[[str], None]
) -> dict[str, Any]:
    """Whole runs of ``methods`` in this process on the task's full training set, each with the task's
    training defaults and ``end_to_end_epochs``, after the shared teacher stage is cached (built here if
    absent), so each wall time is what one more seed of a campaign costs. The staged method runs after
    the baseline and reads the stages the baseline built (TED's fine-tuned student); ``ratio`` is that
    cost, ``ratio_standalone`` adds those stages' build time back. Records go to ``scratch``, never to
    the results folder: they are timings, not results."""
    results: dict[str, Any] = {}
    for name in methods:
        method_cls, task_cls = get_method(name), get_task(settings.task)
        overrides = {"epochs": settings.end_to_end_epochs, "bf16": settings.bf16}
        train = build_train_config(task_cls.train_defaults, None, overrides)
        config = run_config(settings, name, train, settings.teacher_seed)
        paths = Paths(results_dir=scratch / "results", output_dir=scratch / f"run-{name}", cache_dir=cache_dir)
        paths.show_progress = False
        shutil.rmtree(paths.output_dir, ignore_errors=True)
        runner = Runner(plan_run(config, paths))
        if method_cls.uses_teacher or any(s.model == "teacher" for s in runner.plan.method.stages()):
            runner.stages.finetuned("teacher")  # shared by every method and seed: not part of the figure
            runner.stages.log.clear()  # the run below finds it cached, as a campaign's next seed does
        echo(f"bench: whole {name} run …")
        started = time.perf_counter()
        record = runner.run()
        # A stage of this seed built by the baseline's run just now is shared, as in a campaign that runs
        # both (TED's fine-tuned student is the fine-tune run). One found cached from before was paid for
        # by an earlier run: the figure would understate what a new seed costs. Say so (choose an unused
        # --seed to avoid it).
        built_by_others = {
            key for other in results.values() for key, info in other["stages"].items() if info["built_here"]
        }
        own_seed = [
            key
            for key, info in record["stages"].items()
            if not info.get("built_here") and (info.get("settings") or {}).get("seed") == settings.seed
        ]
        shared = [key for key in own_seed if key in built_by_others]
        found = [key for key in own_seed if key not in built_by_others]
        if found:
            echo(f"bench: {name} found stages of seed {settings.seed} cached ({', '.join(found)}): not timed here")
        results[name] = {
            "seed_stages_found_cached": found,
            "shared_with_baseline": shared,
            "wall_seconds": time.perf_counter() - started,
            "stages": {
                key: {"built_here": info.get("built_here", False), "wall_time_s": info.get("wall_time_s")}
                for key, info in record["stages"].items()
            },
            "metrics": record["metrics"],
            "epochs": settings.end_to_end_epochs,
        }
    base, staged = methods
    # as run: the staged method after the baseline, sharing what it can (what it adds to a campaign)
    results["ratio"] = results[staged]["wall_seconds"] / results[base]["wall_seconds"]
    shared_seconds = sum(results[base]["stages"][key]["wall_time_s"] for key in results[staged]["shared_with_baseline"])
    if shared_seconds:  # alone, it would also build the shared stages, at the time they took in the baseline
        results["ratio_standalone"] = (results[staged]["wall_seconds"] + shared_seconds) / results[base]["wall_seconds"]
    return results
