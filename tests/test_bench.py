"""`distillbench bench`: every phase runs on the same batches and lands in a record with provenance."""

from __future__ import annotations

import json
import math

import pytest

from distillbench.bench import seconds_per_step, step_seconds
from distillbench.cli import main
from distillbench.workspace import VERBOSE_ENV


def test_step_times_skip_the_warmup_and_take_each_steps_fastest_round():
    # start at 0; steps end at 10 (slow warm-up), 11, 12, 13
    assert step_seconds([10.0, 11.0, 12.0, 13.0], 0.0) == [10.0, 1.0, 1.0, 1.0]
    assert seconds_per_step([[10.0, 1.0, 1.0, 1.0]], warmup=1) == pytest.approx(1.0)
    assert seconds_per_step([[10.0, 1.0, 1.0, 1.0]], warmup=0) == pytest.approx(13.0 / 4)
    # a hiccup in round 1 at step 2 and in round 2 at step 3: each step counts with its better round
    assert seconds_per_step([[9.0, 1.0, 5.0, 1.0], [8.0, 1.0, 1.0, 4.0]], warmup=1) == pytest.approx(1.0)


def test_bench_writes_a_record_of_every_phase(tiny_bert, glue_dir, workdir, capsys, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)  # an earlier test's --verbose would print the log dicts
    args = ["bench", "--task", "mrpc", "--teacher", str(tiny_bert), "--data-dir", str(glue_dir), "--end-to-end", "1"]
    args += ["--steps", "4", "--warmup", "1", "--rounds", "2", "--batch-size", "8", "--cache-dir", str(workdir / "c")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "'eval_loss'" not in out  # the bare Trainer.evaluate it times prints no metrics dict
    record = json.loads(next((workdir / "results" / "bench").glob("mrpc-cpu-*.json")).read_text())
    staged = {"stage_one_live", "stage_one_cached"}
    assert set(record["phases"]) == {"plain_kd", "harness_kd_live", "harness_kd_cached", "harness_finetune"} | staged
    assert record["methods"] == {"student_only": "finetune", "kd": "kd", "stage_one": "ted: ted-filters-student"}
    # the stage learns the same from cached features as from the live frozen backbone
    live, cached = (record["phases"][name]["mean_train_loss"] for name in ("stage_one_live", "stage_one_cached"))
    assert cached == pytest.approx(live, rel=1e-5)
    whole = record["end_to_end"]
    assert whole["ratio"] == pytest.approx(whole["ted"]["wall_seconds"] / whole["finetune"]["wall_seconds"])
    assert whole["ted"]["stages"]["ted-filters-student"]["built_here"]
    assert not whole["ted"]["stages"]["teacher-finetune"]["built_here"]  # cached before the timing
    # TED's fine-tuned student is the fine-tune run's: shared, and added back for TED alone
    assert whole["ted"]["shared_with_baseline"] == ["student-finetune"]
    built = whole["finetune"]["stages"]["student-finetune"]
    assert built["built_here"] and not whole["ted"]["stages"]["student-finetune"]["built_here"]
    alone = (whole["ted"]["wall_seconds"] + built["wall_time_s"]) / whole["finetune"]["wall_seconds"]
    assert whole["ratio_standalone"] == pytest.approx(alone)
    assert whole["ted"]["seed_stages_found_cached"] == []  # every other stage of the run's own seed was timed
    assert not list((workdir / "results" / "runs").glob("*.json"))  # timings, not results
    assert all(len(p["rounds_seconds_per_step"]) == 2 for p in record["phases"].values())
    assert all(p["seconds_per_step"] > 0 and p["peak_rss_mib"] > 0 for p in record["phases"].values())
    assert record["ratios"]["harness_vs_plain_kd"] > 0
    assert record["teacher_cache"]["examples"] == record["train_examples"]
    assert record["evaluation"]["harness"]["examples_per_second"] > 0
    assert len(record["batch_padded_lengths"]) == 4
    assert record["git"] and record["packages"]["torch"] and record["hardware"]
    assert "harness_vs_plain_kd" in out


def test_bench_rejects_a_budget_with_nothing_to_time(tiny_bert, glue_dir, workdir, capsys):
    assert (
        main(
            [
                "bench",
                "--task",
                "mrpc",
                "--teacher",
                str(tiny_bert),
                "--data-dir",
                str(glue_dir),
                "--steps",
                "2",
                "--warmup",
                "2",
            ]
        )
        == 2
    )
    assert "--steps > --warmup" in capsys.readouterr().err


def test_bench_in_bf16_runs_every_phase_under_autocast(tiny_bert, glue_dir, workdir):
    args = ["bench", "--task", "mrpc", "--teacher", str(tiny_bert), "--data-dir", str(glue_dir), "--bf16"]
    args += ["--steps", "3", "--warmup", "1", "--rounds", "1", "--batch-size", "8", "--cache-dir", str(workdir / "c")]
    assert main(args) == 0
    record = json.loads(next((workdir / "results" / "bench").glob("mrpc-cpu-*.json")).read_text())
    assert record["settings"]["bf16"] is True
    losses = [phase["mean_train_loss"] for phase in record["phases"].values()]
    assert all(math.isfinite(loss) for loss in losses)
    # the plain loop and the harness do the same bf16 work: their losses agree to bf16 precision
    plain, harness = (
        record["phases"]["plain_kd"]["mean_train_loss"],
        record["phases"]["harness_kd_live"]["mean_train_loss"],
    )
    assert harness == pytest.approx(plain, rel=2e-2)


def test_bench_on_a_causal_lm_times_the_same_vocabulary_kd_and_reports_the_top_k_cache(
    tiny_gpt2, text_dir, workdir, monkeypatch
):
    """On clm the plain loop and the harness compute the same chunked vocabulary KL (equal losses), the
    cached phase reads a top-k cache, and the record holds the top-k errors and the memory ratio."""
    import shutil

    import distillbench.bench as bench
    from distillbench.tasks.clm import DEFAULT_HELDOUT, DEFAULT_TRAIN

    data = workdir / "data"
    for name in [*DEFAULT_TRAIN.split(","), DEFAULT_HELDOUT]:  # the default layout, filled with the tiny text
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        source = "heldout" if name == DEFAULT_HELDOUT else "train"
        shutil.copy(text_dir / "text" / f"{source}.txt", data / name)
    monkeypatch.setattr(bench, "VOCABULARY_MEMORY_SHAPE", (2048, 16000))  # 128 MB logits: above the noise
    args = ["bench", "--task", "clm", "--teacher", str(tiny_gpt2), "--data-dir", str(data), "--top-k", "8"]
    # blocks of 128 tokens: GKD's default 64-token prompts and 64 sampled tokens fit
    args += ["--steps", "4", "--warmup", "1", "--rounds", "1", "--batch-size", "4", "--max-seq-length", "128"]
    from conftest import make_tiny_decoder

    make_tiny_decoder(workdir / "student", layers=2)  # stands for a trained student: another model of the vocabulary
    assert main([*args, "--top-k-student", "student", "--cache-dir", str(workdir / "c")]) == 0
    record = json.loads(next((workdir / "results" / "bench").glob("clm-cpu-*.json")).read_text())
    phases = record["phases"]
    assert phases["plain_kd"]["mean_train_loss"] == pytest.approx(
        phases["harness_kd_live"]["mean_train_loss"], rel=1e-3
    )
    assert record["settings"]["data_dir"] == "data:."  # the data folder named portably, not by its path
    assert record["teacher_cache"]["top_k"] == 8
    assert record["settings"]["top_k_student"] == "student"  # named relative to the working folder
    rows = record["top_k_cache"]
    assert [(r["student"], r["temperature"], r["k"]) for r in rows] == [
        (student, temperature, k)
        for student in ("untrained", "trained")
        for temperature in (2.0, 1.0)
        for k in (8, 32, 128)
    ]
    assert all(0 <= r["relative_error"] <= 1 for r in rows)
    for start in range(0, len(rows), 3):  # more of the vocabulary kept, less lost
        errors = [r["relative_error"] for r in rows[start : start + 3]]
        assert errors == sorted(errors, reverse=True)
    assert rows[0]["kd_live"] != rows[6]["kd_live"]  # the second student's own logits
    assert record["ratios"]["vocabulary_kd_vs_lm_loss_memory"] <= 1.2
    gkd = record["on_policy"]["gkd"]  # GKD at its default λ = 0.5 against itself never sampling
    assert gkd["hparams"]["lmbda"] == 0.5 and gkd["steps"] == 4 and 0 <= gkd["sampled_steps"] <= 4
    assert gkd["on_vs_off_policy_step"] > 0 and 0 <= gkd["sampling_share"] < 1
    assert set(record["phases"]) >= {"gkd_on_policy", "gkd_off_policy"}
    from distillbench.bench_report import bench_markdown

    assert "| gkd | 0.5 | " in bench_markdown(workdir / "results")


def test_reports_show_the_newest_bench_of_each_device_and_model_kind(tmp_path):
    """A causal LM's bench does not hide a classifier's (nor a GPU's the CPU's), and its top-k table shows."""
    from distillbench.bench_report import newest_benches, top_k_table

    def bench(name: str, task: str, device: str, finished: str, **extra) -> None:
        record = {"settings": {"task": task}, "device": device, "finished_at": finished, **extra}
        (tmp_path / "bench").mkdir(exist_ok=True)
        (tmp_path / "bench" / name).write_text(json.dumps(record))

    top_k = [{"k": 8, "bytes_per_token": 52, "kd_live": 0.5, "kd_top_k": 0.4, "relative_error": 0.2}]
    bench("mrpc-old.json", "mrpc", "cpu", "2026-01-01")
    bench("mrpc-new.json", "mrpc", "cpu", "2026-02-01")
    bench("clm.json", "clm", "cpu", "2026-03-01", top_k_cache=top_k, vocabulary_loss_memory={"kd": 1.3})
    bench("mrpc-gpu.json", "mrpc", "cuda", "2026-01-15")
    bench("rte.json", "rte", "cpu", "2026-01-20")  # an older encoder bench: the newer MRPC one stands for it
    assert [name for name, _ in newest_benches(tmp_path)] == ["clm.json", "mrpc-new.json", "mrpc-gpu.json"]
    assert "| untrained | None | k = 8 | 52 | 0.5000 | 0.4000 | 20.0% |" in top_k_table(
        json.loads((tmp_path / "bench" / "clm.json").read_text())
    )


def test_the_generative_page_shows_the_newest_on_policy_timing_of_each_device(tmp_path):
    from distillbench.bench_report import on_policy_markdown

    assert on_policy_markdown(tmp_path).startswith("No bench record of an on-policy method yet")
    (tmp_path / "bench").mkdir()
    row = {"hparams": {"lmbda": 0.5}, "sampled_steps": 36, "steps": 60, "on_vs_off_policy_step": 1.544}
    settings = {"task": "clm", "steps": 30, "batch_size": 8, "max_seq_length": 128, "rounds": 2}
    record = {"settings": settings, "device": "cpu", "finished_at": "2026-03-01", "torch_threads": 1}
    (tmp_path / "bench" / "clm.json").write_text(
        json.dumps(record | {"on_policy": {"gkd": row | {"sampling_share": 0.19}}})
    )
    assert "| gkd | 0.5 | 36 of 60 | 1.54 | 19% |" in on_policy_markdown(tmp_path)


def test_a_causal_lm_bench_holds_its_cached_kd_to_the_top_k_goal():
    """The cached phase of a causal LM reads a top-k cache (goal ≤ 1.10); an encoder's reads full outputs."""
    from distillbench.bench_report import ratio_labels

    encoder = {"ratios": {"cached_kd_vs_student_only": 1.0}}
    causal = {**encoder, "top_k_cache": [{"k": 8}]}
    assert ratio_labels(encoder)["cached_kd_vs_student_only"] == "cached KD ÷ student only (goal ≤ 1.05)"
    assert ratio_labels(causal)["cached_kd_vs_student_only"] == "top-k cached KD ÷ student only (goal ≤ 1.10)"
