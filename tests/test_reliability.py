"""Every bad input a new user tried: exit code 2, one ``error:`` line, no traceback, nothing written.

Each case changes one thing in a tiny, otherwise valid run (or a record-reading command) and checks
that the harness refuses it before anything is written under results/, the output folder or the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import MRPC_HEADER, STSB_HEADER, tiny_run_args, write_tsv
from distillbench.cli import main

# (extra run arguments after the valid tiny defaults — later flags win, method kd unless changed, message part)
RUN_CASES: dict[str, tuple[list[str], str]] = {
    "unknown method": (["--method", "tde"], "unknown method 'tde'. Did you mean 'ted'?"),
    "unknown task": (["--task", "mrcp"], "unknown task 'mrcp'"),
    "unknown hparam": (["--set", "kl_alpa=2"], "--set kl_alpa: unknown hyper-parameter"),
    "float expected": (["--set", "kl_alpha=lots"], "expected a value of type float"),
    "int expected": (["--set", "batch_size=1.5"], "expected a value of type int"),
    "bool expected": (["--set", "bf16=maybe"], "expected a value of type bool"),
    "not key=value": (["--set", "kl_alpha"], "--set expects key=value"),
    "empty key": (["--set", "=3"], "--set expects key=value"),
    "lwd unmappable": (["--method", "lwd", "--student-layers", "3"], "cannot map a 3-layer student"),
    "ted unmappable": (["--method", "ted", "--set", "num_filters=3"], "cannot place 3 filters"),
    "student_start": (["--set", "student_start=half"], "student_start=half: must be one of pretrained, finetuned"),
    "missing teacher": (["--teacher", "./no-such-model"], "model folder ./no-such-model does not exist"),
    "missing finetuned teacher": (["--teacher-finetuned", "./none"], "model folder ./none does not exist"),
    "unknown preset": (["--preset", "huge"], "unknown preset 'huge'"),
    "learning_rate -1": (["--set", "learning_rate=-1"], "learning_rate=-1.0: must be > 0"),
    "learning_rate 0": (["--set", "learning_rate=0"], "learning_rate=0.0: must be > 0"),
    "learning_rate inf": (["--set", "learning_rate=inf"], "learning_rate=inf: must be a finite number"),
    "teacher_learning_rate 0": (["--set", "teacher_learning_rate=0"], "teacher_learning_rate=0.0: must be > 0"),
    "epochs 0": (["--set", "epochs=0"], "epochs=0.0: must be > 0"),
    "--epochs -1": (["--epochs", "-1"], "epochs=-1.0: must be > 0"),
    "teacher_epochs 0": (["--set", "teacher_epochs=0"], "teacher_epochs=0.0: must be > 0"),
    "--max-steps 0": (["--max-steps", "0"], "max_steps=0: must be > 0 (or -1)"),
    "--max-steps -5": (["--max-steps", "-5"], "max_steps=-5: must be > 0 (or -1)"),
    "teacher_max_steps 0": (["--set", "teacher_max_steps=0"], "teacher_max_steps=0: must be > 0 (or -1)"),
    "batch_size 0": (["--set", "batch_size=0"], "batch_size=0: must be ≥ 1"),
    "teacher_batch_size 0": (["--set", "teacher_batch_size=0"], "teacher_batch_size=0: must be ≥ 1"),
    "eval_batch_size 0": (["--set", "eval_batch_size=0"], "eval_batch_size=0: must be ≥ 1"),
    "warmup_steps -1": (["--set", "warmup_steps=-1"], "warmup_steps=-1: must be ≥ 0"),
    "teacher_warmup_steps -1": (["--set", "teacher_warmup_steps=-1"], "teacher_warmup_steps=-1: must be ≥ 0"),
    "weight_decay -0.1": (["--set", "weight_decay=-0.1"], "weight_decay=-0.1: must be ≥ 0"),
    "max_seq_length 0": (["--set", "max_seq_length=0"], "max_seq_length=0: must be ≥ 8"),
    "max_seq_length 4": (["--set", "max_seq_length=4"], "max_seq_length=4: must be ≥ 8"),
    "max_seq_length > positions": (["--set", "max_seq_length=129"], "the teacher has 128 positions"),
    "max_train_samples 0": (["--set", "max_train_samples=0"], "max_train_samples=0: must be ≥ 1"),
    "save_steps 0": (["--set", "save_steps=0"], "save_steps=0: must be ≥ 1"),
    "logging_steps 0": (["--set", "logging_steps=0"], "logging_steps=0: must be ≥ 1"),
    "teacher_cache maybe": (["--set", "teacher_cache=maybe"], "teacher_cache=maybe: must be one of on, off, auto"),
    "teacher_cache_dtype int8": (["--set", "teacher_cache_dtype=int8"], "teacher_cache_dtype=int8: must be one of"),
    "teacher_cache_max_gb -1": (["--set", "teacher_cache_max_gb=-1"], "teacher_cache_max_gb=-1.0: must be ≥ 0"),
    "eval_strategy": (["--set", "eval_strategy=sometimes"], "eval_strategy=sometimes: must be one of epoch, end"),
    "gradient_accumulation 0": (["--set", "gradient_accumulation_steps=0"], "gradient_accumulation_steps=0"),
    "dataloader workers -1": (["--set", "dataloader_num_workers=-1"], "dataloader_num_workers=-1: must be ≥ 0"),
    "bf16 and fp16": (["--set", "bf16=true", "--set", "fp16=true"], "choose one mixed precision"),
    "temperature 0": (["--set", "temperature=0"], "temperature=0.0: must be > 0"),
    "temperature -2": (["--set", "temperature=-2"], "temperature=-2.0: must be > 0"),
    "kl_alpha -1": (["--set", "kl_alpha=-1"], "kl_alpha=-1.0: must be ≥ 0"),
    "kl_alpha nan": (["--set", "kl_alpha=nan"], "kl_alpha=nan: must be a finite number"),
    "lwd mse_alpha -1": (["--method", "lwd", "--set", "mse_alpha=-1"], "mse_alpha=-1.0: must be ≥ 0"),
    "lwd projection": (["--method", "lwd", "--set", "projection=sometimes"], "projection=sometimes: must be one of"),
    "minilm_alpha -1": (["--method", "minilm", "--set", "minilm_alpha=-1"], "minilm_alpha=-1.0: must be ≥ 0"),
    "relation_heads -1": (["--method", "minilmv2", "--set", "relation_heads=-1"], "relation_heads=-1: must be ≥ 0"),
    "relation_heads 5": (["--method", "minilmv2", "--set", "relation_heads=5"], "not divisible by 5 relation heads"),
    "teacher_layer 9": (["--method", "minilmv2", "--set", "teacher_layer=9"], "teacher_layer 9 is outside"),
    "ted num_filters -1": (["--method", "ted", "--set", "num_filters=-1"], "num_filters=-1: must be ≥ 0"),
    "ted filter_output_dim -1": (["--method", "ted", "--set", "filter_output_dim=-1"], "filter_output_dim=-1"),
    "random:0 student": (["--student", "random:0"], "random:N: 0 is out of range"),
    "layer ids out of range": (["--student-layer-ids", "1,9"], "the teacher has only 4 layers"),
    "layer ids not ints": (["--student-layer-ids", "a"], "'a' is not an integer"),
    "seed not int": (["--seed", "abc"], "invalid int value: 'abc'"),
    "teacher-cache choice": (["--teacher-cache", "maybe"], "invalid choice: 'maybe'"),
    "cache on with minilm": (["--method", "minilm", "--teacher-cache", "on"], "needs live teacher outputs"),
    "cache on with finetune": (["--method", "finetune", "--teacher-cache", "on"], "uses no teacher"),
    "params worst": (["--params", "worst"], "only 'best' is supported"),
    "params best without study": (["--params", "best"], "no tuned parameters"),
    "unknown flag": (["--bogus"], "unrecognized arguments: --bogus"),
    "student record missing": (["--student", "nowhere.json"], "not a run record with a saved student"),
    "squad doc_stride 0": (["--task", "squad", "--set", "doc_stride=0"], "doc_stride=0: must be ≥ 1"),
    "results folder is a file": (["--results-dir", "a-file"], "results folder a-file is a file"),
    "output folder is a file": (["--output-dir", "a-file"], "output folder a-file is a file"),
    "cache folder is a file": (["--cache-dir", "a-file"], "cache folder a-file is a file"),
    "negative seed": (["--seed", "-1"], "--seed -1: seeds are non-negative integers"),
    "negative teacher seed": (["--teacher-seed", "-3"], "--teacher-seed -3: seeds are non-negative integers"),
    "negative teacher seeds": (["--teacher-seeds=-1,2"], "--teacher-seeds -1: seeds are non-negative integers"),
    "empty teacher member": (["--teacher", "TEACHER,"], "an empty member (a stray comma?)"),
}


def assert_refused(code: int, err: str, message: str, workdir: Path) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert message in err, err
    for folder in ("results", "outputs", "cache"):
        assert not (workdir / folder).is_dir(), f"{folder}/ was written"


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_bad_run_input(case, tiny_bert, glue_dir, workdir, capsys):
    extra, message = RUN_CASES[case]
    extra = [a.replace("TEACHER", str(tiny_bert)) for a in extra]
    (workdir / "a-file").write_text("not a folder")
    code = main([*tiny_run_args(tiny_bert, glue_dir, "kd"), *extra])
    assert_refused(code, capsys.readouterr().err, message, workdir)


def mrpc_data(root: Path, train: str | bytes) -> Path:
    folder = root / "glue" / "MRPC"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_bytes(train if isinstance(train, bytes) else train.encode())
    write_tsv(folder / "dev.tsv", MRPC_HEADER, [["1", "1", "2", "a cat .", "a dog ."]])
    return root


DATA_CASES = {
    "empty file": ("mrpc", "", "the file is empty"),
    "header only": ("mrpc", "\t".join(MRPC_HEADER) + "\n", "no data rows"),
    "not utf-8": ("mrpc", "\t".join(MRPC_HEADER).encode() + b"\n1\t1\t2\tcaf\xe9\tb\n", "not UTF-8 text"),
    "label outside the set": ("mrpc", "\t".join(MRPC_HEADER) + "\n7\t1\t2\ta\tb\n", "line 2 has label '7'"),
    "wrong field count": ("mrpc", "\t".join(MRPC_HEADER) + "\n1\t1\t2\ta\n", "line 2 has 4 fields, expected 5"),
    "non-numeric sts-b score": ("stsb", None, "line 2 has a non-numeric score 'high'"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_file(case, tiny_bert, workdir, tmp_path, capsys):
    task, train, message = DATA_CASES[case]
    if task == "stsb":
        row = ["0", "g", "f", "y", "0", "s", "s", "a cat .", "a dog .", "high"]
        data = tmp_path / "data"
        for split in ("train", "dev"):
            write_tsv(data / "glue" / "STS-B" / f"{split}.tsv", STSB_HEADER, [row])
    else:
        data = mrpc_data(tmp_path / "data", train)
    code = main(tiny_run_args(tiny_bert, data, "kd", task))
    assert_refused(code, capsys.readouterr().err, message, workdir)


def test_missing_data_folder_and_file(tiny_bert, glue_dir, workdir, tmp_path, capsys):
    code = main(tiny_run_args(tiny_bert, tmp_path / "nowhere", "kd"))
    assert_refused(code, capsys.readouterr().err, "does not exist", workdir)
    partial = tmp_path / "partial" / "glue" / "MRPC"
    partial.mkdir(parents=True)
    (partial / "train.tsv").write_text((glue_dir / "glue" / "MRPC" / "train.tsv").read_text())
    code = main(tiny_run_args(tiny_bert, tmp_path / "partial", "kd"))
    assert_refused(code, capsys.readouterr().err, "missing data file", workdir)


def truncated_record(workdir: Path) -> Path:
    runs = workdir / "results" / "runs"
    runs.mkdir(parents=True)
    path = runs / "mrpc-kd-seed1-0000.json"
    path.write_text('{"kind": "run", "method": "kd", "task": "mr')
    return path


OTHER_CASES = {
    "table format": (["table", "--format", "xml"], "unknown format 'xml'"),
    "table score": (["table", "--score", "worst"], "unknown score 'worst'"),
    "table task": (["table", "--tasks", "mrcp"], "unknown task 'mrcp'"),
    "table resamples": (["table", "--significance", "--resamples", "10"], "--resamples must be at least 1000"),
    "table missing results": (["table", "--results-dir", "nowhere"], "results directory nowhere does not exist"),
    "plot kind": (["plot", "pie"], "unknown plot 'pie'"),
    "plot loss without run": (["plot", "loss"], "plot loss needs --run PATH"),
    "plot loss on a truncated record": (["plot", "loss", "--run", "TRUNCATED"], "is not a readable run record"),
    "compare unknown task": (["compare", "kd", "finetune", "--task", "mrcp"], "unknown task 'mrcp'"),
    "compare without records": (["compare", "kd", "finetune", "--task", "mrpc"], "no mrpc records of method 'kd'"),
    "sweep without grid": (["sweep", "--methods", "kd"], "sweep needs --tasks"),
    "sweep bad seeds": (["sweep", "--methods", "kd", "--tasks", "mrpc", "--seeds", "1,x"], "comma-separated integers"),
    "sweep missing file": (["sweep", "--file", "none.toml"], "cannot read sweep file none.toml"),
    "tune pruner": (["tune", "--method", "kd", "--task", "mrpc", "--pruner", "coin"], "unknown pruner 'coin'"),
    "tune trials": (["tune", "--method", "kd", "--task", "mrpc", "--trials", "0"], "--trials must be at least 1"),
    "bench steps": (["bench", "--task", "mrpc", "--steps", "2", "--warmup", "3"], "bench needs --steps > --warmup"),
    "bench task": (["bench"], "bench needs --task (or --reading)"),
    "bench end to end": (["bench", "--task", "mrpc", "--end-to-end", "-1"], "--end-to-end -1.0: epochs must be ≥ 0"),
}


@pytest.mark.parametrize("case", sorted(OTHER_CASES))
def test_bad_input_to_other_commands(case, workdir, capsys):
    args, message = OTHER_CASES[case]
    if "TRUNCATED" in args:
        args = [str(truncated_record(workdir)) if a == "TRUNCATED" else a for a in args]
    elif args[0] == "compare":
        truncated_record(workdir)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert err.count("\n") == 1 or args[0] in ("table", "compare")  # tables first say what they read
    assert not (workdir / "cache").exists() and not (workdir / "results" / "plots").exists()


def test_tables_count_records_they_cannot_read(workdir, capsys):
    truncated_record(workdir)
    assert main(["table"]) == 0
    assert "1 unreadable (not valid JSON)" in capsys.readouterr().err


SWEEP_CASES = {
    "not toml": ('methods = ["kd"\n', "sweep file"),
    "seed as text": ('methods = ["kd"]\ntasks = ["mrpc"]\nseeds = ["1"]\n', "expected a list of integers"),
    "seed as float": ('methods = ["kd"]\ntasks = ["mrpc"]\nseeds = [1.7]\n', "expected a list of integers"),
    "seed as bool": ('methods = ["kd"]\ntasks = ["mrpc"]\nseeds = [true]\n', "expected a list of integers"),
    "negative seed": ('methods = ["kd"]\ntasks = ["mrpc"]\nseeds = [-3]\n', "seeds are non-negative integers"),
    "seed twice": ('methods = ["kd"]\ntasks = ["mrpc"]\nseeds = [1, 1]\n', "seed 1 is listed twice"),
    "method twice": ('methods = ["kd", "kd"]\ntasks = ["mrpc"]\nseeds = [1]\n', "'kd' is listed twice"),
    "method as number": ('methods = [3]\ntasks = ["mrpc"]\nseeds = [1]\n', "expected a list of strings"),
    "task_args off the grid": (
        'methods = ["kd"]\ntasks = ["mrpc"]\nseeds = [1]\n[task_args]\nstsb = ["--epochs", "1"]\n',
        "task_args for 'stsb', which is not in the grid",
    ),
    "method_args off the grid": (
        'methods = ["kd"]\ntasks = ["mrpc"]\nseeds = [1]\n[method_args]\nted = ["--epochs", "1"]\n',
        "method_args for 'ted', which is not in the grid",
    ),
    "not utf-8": (b'methods = ["k\xe9"]\n', "not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_bad_sweep_file_is_one_line(case, workdir, capsys, tmp_path):
    text, message = SWEEP_CASES[case]
    bad = tmp_path / "s.toml"
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["sweep", "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: sweep file {bad}:") and err.count("\n") == 1 and message in err, err
    assert not (workdir / "distillbench-runs").exists() and not (workdir / "results").exists()


def test_negative_and_repeated_seeds_on_the_sweep_command_line(workdir, capsys):
    for seeds, message in (("-1", "seeds are non-negative integers"), ("1,1", "seed 1 is listed twice")):
        assert main(["sweep", "--methods", "kd", "--tasks", "mrpc", "--seeds", seeds]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def test_a_bad_optuna_storage_is_one_line(tiny_bert, glue_dir, workdir, capsys):
    args = tiny_run_args(tiny_bert, glue_dir, "kd")
    args[0] = "tune"
    code = main([*args, "--storage", "postgresql://nobody@127.0.0.1:1/none", "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot open Optuna storage") and err.count("\n") == 1, err
    json.dumps(err)


def test_a_plugin_reusing_a_built_in_name_is_one_line(tmp_path, capsys):
    path = tmp_path / "my_kd.py"
    path.write_text(
        "from distillbench import Method, register_method\n@register_method('kd')\nclass Mine(Method): pass\n"
    )
    assert main(["--plugin", str(path), "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "method 'kd' is already registered by distillbench.methods.kd" in err


def test_two_plugin_files_of_one_name_are_one_line_naming_both(tmp_path, capsys):
    first, second = tmp_path / "a" / "extra_method.py", tmp_path / "b" / "extra_method.py"
    for folder, name in ((first, "extra-a"), (second, "extra-b")):
        folder.parent.mkdir()
        folder.write_text(
            f"from distillbench import Method, register_method\n@register_method('{name}')\nclass M(Method): pass\n"
        )
    assert main(["--plugin", str(first), "--plugin", str(second), "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(second) in err and str(first.resolve()) in err


def test_a_cell_another_sweep_holds_is_running_elsewhere_not_failed(tiny_bert, glue_dir, workdir, capsys):
    from distillbench.cached import exclusive

    run_flags = tiny_run_args(tiny_bert, glue_dir, "kd")[5:]
    sweep = ["sweep", "--methods", "kd", "--tasks", "mrpc", "--seeds", "1", *run_flags]
    assert main([*sweep, "--dry-run"]) == 0
    run_name = capsys.readouterr().out.splitlines()[1].split()[-1]
    with exclusive(workdir / "outputs" / f"{run_name}.lock"):  # another sweep is running this cell
        assert main(sweep) == 0
    out = capsys.readouterr().out
    assert "0 ran, 0 already complete, 1 running elsewhere, 0 failed" in out
    assert "running elsewhere: mrpc kd seed 1" in out


def test_tune_report_of_a_missing_study_creates_nothing(workdir, capsys):
    assert main(["tune", "--method", "kd", "--task", "mrpc", "--report", "--study-name", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study database at" in err
    assert not (workdir / "distillbench-runs").exists() and not (workdir / "results").exists()


def test_a_storage_url_optuna_cannot_open_is_one_line_without_warnings(tiny_bert, glue_dir, workdir, capsys):
    args = tiny_run_args(tiny_bert, glue_dir, "kd")
    args[0] = "tune"
    assert main([*args, "--storage", "bogus://x", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot open Optuna storage bogus://x"), err
