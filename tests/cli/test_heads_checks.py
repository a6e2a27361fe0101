"""`heads`: --config files, checks before any output, prediction formats, damaged runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from heads.synthetic import write_store
from tests.heads.stores import cluster_videos, make_cluster_store
from vidfeat.errors import ConfigError
from vidfeat_cli.heads import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ("--epochs", "1", "--hidden-size", "8", "--fc-size", "8")


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cluster_store(tmp_path_factory.mktemp("s") / "s.zarr", 40, n_classes=4)


@pytest.fixture(scope="module")
def run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "bof"
    result = invoke("-q", "train", store, "-m", "bof", "-o", out, *SMALL)
    assert result.exit_code == 0, result.output
    return out


# ------------------------------------------------------------------------------ --config


def test_yaml_config_supplies_the_model_and_options_override_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: gru\nepochs: 7\nhead:\n  hidden_size: 12\nbatch-size: 4\n")
    result = invoke("train", "--config", config, "--epochs", "3", "--print-config")
    assert result.exit_code == 0, result.output
    merged = json.loads(result.output)
    assert merged["model"] == "gru" and merged["epochs"] == 3
    assert merged["head"]["hidden_size"] == 12 and merged["data"]["batch_size"] == 4


def test_yaml_reads_exponents_without_a_dot_as_numbers(tmp_path):
    # PyYAML's YAML 1.1 rules read 1e-3 as the string "1e-3", which was refused as no number.
    config = tmp_path / "run.yaml"
    config.write_text("model: gru\nlr: 1e-3\nweight_decay: 5E-5\ntag_like: 1e3x\n")
    result = invoke("train", "--config", config, "--print-config")
    assert result.exit_code == 2 and "tag_like" in result.output  # still an unknown key
    config.write_text("model: gru\nlr: 1e-3\nweight_decay: 5E-5\n")
    merged = json.loads(invoke("train", "--config", config, "--print-config").output)
    assert (merged["lr"], merged["weight_decay"]) == (0.001, 5e-5)


def test_naming_the_same_optimizer_keeps_the_configs_learning_rate(tmp_path):
    # Another optimiser without --lr takes its own default; the same one named again changed
    # nothing but dropped the file's lr all the same.
    config = tmp_path / "run.yaml"
    config.write_text("model: gru\noptimizer: sgd\nlr: 0.05\n")
    same = invoke("train", "--config", config, "--optimizer", "sgd", "--print-config")
    other = invoke("train", "--config", config, "--optimizer", "adam", "--print-config")
    assert [json.loads(r.stdout)["lr"] for r in (same, other)] == [0.05, 0.001]
    assert json.loads(other.stdout)["optimizer"] == "adam"
    # The file's lr may have been chosen on purpose: dropping it is said.
    assert "lr" not in same.stderr
    assert "the lr 0.05 of the sgd config is not kept" in other.stderr


def test_a_diverging_run_says_what_to_change(store, tmp_path):
    # It failed as "scores contain 24 NaN or infinite value(s)", and --resume replayed it.
    out = tmp_path / "blown"
    args = ["-q", "train", store, "-m", "logistic", "-o", out, "--epochs", "3"]
    result = invoke(*args, "--optimizer", "sgd", "--lr", "1e30", "--grad-clip", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line = result.output.strip().splitlines()[-1]  # after the split's warning
    assert "training diverged at epoch 1/3" in line and "Lower --lr (now 1e+30, sgd" in line
    line = one_line_error(invoke(*args, "--lr", "inf", "--force"))
    assert "lr must be a finite number" in line


def test_the_logged_lr_is_the_one_the_windows_last_step_used(store, tmp_path):
    # Decay by examples inside an epoch: the record showed the rate at the epoch's start.
    out = tmp_path / "decay"
    args = ["-q", "train", store, "-m", "logistic", "-o", out, "--epochs", "1"]
    args += ["--batch-size", "4", "--lr-decay-examples", "8", "--lr-gamma", "0.5"]
    assert invoke(*args).exit_code == 0
    (record,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last_batch_start = record["examples"] - 4  # 28 training videos: full batches of 4
    assert record["lr"] == pytest.approx(1e-3 * 0.5 ** (last_batch_start // 8))
    assert record["lr"] < 1e-3


def test_on_off_options_override_only_when_given(tmp_path):
    # Not given, an on/off option keeps the default or the config file's value, like any other.
    plain = json.loads(invoke("train", "-m", "gru", "--print-config").output)
    assert plain["data"]["bucket"] is True  # the documented default
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: gru\ndata: {bucket: false}\nclass_weights: true\nhead: {residual: true}\n"
    )
    kept = json.loads(invoke("train", "--config", config, "--print-config").output)
    assert kept["data"]["bucket"] is False and kept["class_weights"] is True
    assert kept["head"]["residual"] is True
    flipped = invoke(
        "train", "--config", config, "--bucket", "--no-class-weights", "--print-config"
    )
    merged = json.loads(flipped.output)
    assert merged["data"]["bucket"] is True and merged["class_weights"] is False


def test_a_runs_config_json_is_a_valid_config(run):
    result = invoke("train", "--config", run / "config.json", "--print-config")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"] == "bof"


@pytest.mark.parametrize(
    "text, suffix, hint",
    [
        ('{"model": "bof", "epocs": 2}', ".json", "did you mean 'epochs'?"),
        ("model: bof\nhead:\n  hiden_size: 3\n", ".yaml", "did you mean 'hidden_size'?"),
        ("model: bof\nzzz: 1\n", ".yml", "unknown key 'zzz'"),
        ("model: [bof\n", ".yaml", "cannot parse config"),
    ],
)
def test_config_typos_are_refused(tmp_path, store, text, suffix, hint):
    config = tmp_path / f"c{suffix}"
    config.write_text(text)
    out = tmp_path / "run"
    line = one_line_error(invoke("train", store, "--config", config, "-o", out))
    assert hint in line and not out.exists()


def test_model_is_required_without_a_config(tmp_path, store):
    line = one_line_error(invoke("train", store, "-o", tmp_path / "r"))
    assert "--model" in line and not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------ no leftovers


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "-m", "bof"], "no feature store"),
        (["{store}", "-m", "bof", "--classes", "nope"], "nope"),
        (["{store}", "-m", "bof", "--dropout", "2"], "dropout"),
        (["{store}", "-m", "bof", "--resume"], "no run to continue"),
    ],
)
def test_failed_validation_leaves_no_output(tmp_path, store, args, message):
    out = tmp_path / "deep" / "run"
    values = {"missing": tmp_path / "nope.zarr", "store": store}
    result = invoke("train", *[a.format(**values) for a in args], "-o", out, *SMALL)
    assert message in one_line_error(result)
    assert not out.exists()


def test_a_single_class_or_video_is_refused_before_training(tmp_path, store):
    one_class = invoke("train", store, "-m", "bof", "-o", tmp_path / "a", "--classes", "class1")
    assert "only one class (class1)" in one_line_error(one_class)
    video = ("v0", np.ones((3, 16), np.float32), ("class0", "class1"))  # two classes, one video
    one_video = write_store(tmp_path / "one.zarr", [video], dim=16, attrs={"backbone": "x"})
    line = one_line_error(invoke("train", one_video, "-m", "bof", "-o", tmp_path / "b"))
    assert "only 1 labelled video" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_store_with_nothing_to_train_on_says_why(tmp_path):
    from vidfeat import create_store

    failed = tmp_path / "failed.zarr"
    with create_store(failed, dim=4) as w:
        for i in range(3):
            w.write_failure(f"v{i}", "missing", "file not found", labels=("a",))
    line = one_line_error(invoke("train", failed, "-m", "bof", "-o", tmp_path / "a"))
    assert "none of the store's 3 videos was extracted (all failed)" in line
    assert "vidfeat info" in line and "--retry-failed" in line
    unlabelled = tmp_path / "unlabelled.zarr"
    with create_store(unlabelled, dim=4) as w:
        w.write("v0", np.ones((2, 4), np.float32))
    line = one_line_error(invoke("train", unlabelled, "-m", "bof", "-o", tmp_path / "b"))
    assert "the store's 1 extracted video carries no labels" in line
    assert "manifest's labels column" in line
    with create_store(unlabelled, dim=4) as w:  # the labelled one failed
        w.write_failure("v1", "decode_error", "corrupt", labels=("a",))
    line = one_line_error(invoke("train", unlabelled, "-m", "bof", "-o", tmp_path / "b"))
    assert "carries no labels, and the 1 labelled failed" in line and "--retry-failed" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_second_process_writing_the_same_run_is_refused(tmp_path, store, run):
    # Two commands given the same --out both found it new and interleaved their files (a
    # config of one head beside the checkpoint of the other).
    import fcntl
    import os

    out = tmp_path / "busy"
    shutil.copytree(run, out)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `heads train` holds it
        for args in (["--force"], ["--resume"]):
            result = invoke("-q", "train", store, "-m", "bof", "-o", out, *SMALL, *args)
            assert "is being written by another heads process" in one_line_error(result)
    finally:
        os.close(fd)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before
    assert invoke("-q", "train", store, "-m", "bof", "-o", out, *SMALL, "--force").exit_code == 0


# Takes the run directory's lock, forks a child that lives on (as DataLoader workers outlive
# a killed `heads train` for seconds), then dies by SIGKILL while holding the lock.
_KILLED_HOLDER = """
import os, signal, sys, time
from pathlib import Path
from vidfeat_cli.heads_options import run_dir_lock
with run_dir_lock(Path(sys.argv[1])):
    child = os.fork()
    if child == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)  # the test reads the parent's output to its end
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_forked_children_do_not_keep_its_lock(tmp_path):
    import fcntl
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_HOLDER, str(out)], capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child = int(proc.stdout)
    fd = os.open(out, os.O_RDONLY)
    try:
        os.kill(child, 0)  # still alive, with its copy of the parent's descriptors
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # yet free at once: a rerun may resume
    finally:
        os.close(fd)
        os.kill(child, signal.SIGKILL)


def test_predict_says_that_failed_videos_are_not_scored(tmp_path, store, run):
    from vidfeat import create_store, open_store

    with_failures = tmp_path / "f.zarr"
    shutil.copytree(store, with_failures)
    with open_store(store) as r:
        dim, attrs, n = r.dim, dict(r.attrs), len(r.ok_ids)
    with create_store(with_failures, dim=dim, attrs=attrs) as w:
        for i in range(3):
            w.write_failure(f"broken{i}", "decode_error", "corrupt", labels=("class0",))
    out = tmp_path / "p.csv"
    result = invoke("predict", run, "--store", with_failures, "--out", out)
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == n
    assert f"3 of the {n + 3} videos in {with_failures} failed extraction" in result.output
    clean = invoke("predict", run, "--store", store, "--out", tmp_path / "q.csv")
    assert clean.exit_code == 0 and "failed extraction" not in clean.output, clean.output


def test_a_batch_size_of_one_trains_every_epoch(tmp_path, store):
    # It hung in the second epoch (or, with --eval-every, failed with ZeroDivisionError).
    out = tmp_path / "one"
    args = ["-q", "train", store, "-m", "logistic", "-o", out, "--batch-size", "1"]
    assert invoke(*args, "--epochs", "2").exit_code == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["step"] == 2 * records[0]["step"]
    bof = invoke("-q", "train", store, "-m", "bof", "-o", tmp_path / "bof", "--batch-size", "1")
    assert bof.exit_code == 2 and "Traceback" not in bof.output
    assert bof.output.strip().splitlines()[-1].startswith("error: --model bof trains BatchNorm")
    assert not (tmp_path / "bof").exists()


def test_a_batch_size_of_one_finetunes_a_head_whose_batchnorm_is_frozen(run, store, tmp_path):
    # --train head keeps bof's BatchNorm layers frozen in eval mode: batches of one are fine.
    out = tmp_path / "ft"
    args = ["finetune", run, "--store", store, "-o", out, "--train", "head", "--epochs", "1"]
    assert invoke("-q", *args, "--batch-size", "1").exit_code == 0
    assert (out / "test_metrics.json").exists()


def test_weights_that_no_longer_fit_the_heads_code_are_named(run, tmp_path):
    # After an edit of a head's code its saved runs fail to load: that was an internal error
    # (exit 70) whose first line named no key.
    from heads import checkpoint as ck

    edited = tmp_path / "edited"
    shutil.copytree(run, edited)
    state = ck.load_checkpoint(edited / ck.BEST)
    weights = state["model_state"]
    old = next(k for k in weights if k.endswith("weight"))
    weights["renamed.weight"] = weights.pop(old)
    ck.save_checkpoint(edited / ck.BEST, state)
    line = one_line_error(invoke("evaluate", edited))
    assert "do not fit the bof head" in line and f"missing keys (1): {old}" in line
    assert "unexpected keys (1): renamed.weight" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_any_output(tmp_path, store):
    out = tmp_path / "run"
    line = one_line_error(invoke("train", store, "-m", "bof", "-o", out, "--device", "cuda"))
    assert "CUDA is not available" in line and not out.exists()


def test_a_file_in_the_way_is_one_line(tmp_path, store):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_line_error(invoke("train", store, "-m", "bof", "-o", blocker / "run", *SMALL))
    assert "a file is in the way" in line


# ------------------------------------------------------------------------------ predict


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_predict_format_follows_the_suffix(run, store, tmp_path, suffix):
    out = tmp_path / f"p{suffix}"
    result = invoke("predict", run, "--store", store, "--top-k", "2", "--out", out)
    assert result.exit_code == 0, result.output
    readers = {
        ".csv": pd.read_csv,
        ".parquet": pd.read_parquet,
        ".jsonl": lambda p: pd.read_json(p, lines=True),
    }
    table = readers[suffix](out)
    assert list(table.columns) == ["video_id", "predictions"] and len(table) == 40
    for cell in table["predictions"]:
        # Best first, label and score apart: JSON text in a CSV cell, a list of records else.
        top = json.loads(cell) if suffix == ".csv" else [dict(x) for x in cell]
        assert [set(x) for x in top] == [{"label", "score"}] * 2
        assert top[0]["score"] >= top[1]["score"] and top[0]["label"] != top[1]["label"]


def test_predict_npz_holds_the_raw_scores(run, store, tmp_path):
    out = tmp_path / "scores.npz"
    assert invoke("predict", run, "--store", store, "--out", out).exit_code == 0
    csv = tmp_path / "top.csv"
    assert invoke("predict", run, "--store", store, "--out", csv, "--top-k", "1").exit_code == 0
    with np.load(out) as npz:
        scores, names, ids = npz["scores"], list(npz["class_names"]), list(npz["video_id"])
    assert scores.shape == (40, 4) and names == ["class0", "class1", "class2", "class3"]
    top = pd.read_csv(csv).set_index("video_id")["predictions"].map(json.loads)
    for i in range(0, 40, 7):
        (best,) = top[ids[i]]
        assert names[int(np.argmax(scores[i]))] == best["label"]
        assert best["score"] == pytest.approx(float(scores[i].max()), abs=1e-6)


@pytest.mark.parametrize(
    "name, fmt, message",
    [
        ("p.parquet", "csv", "does not match"),
        ("p.csv", "npz", "does not match"),
        ("p.txt", None, "cannot tell the format"),
    ],
)
def test_predict_refuses_a_format_the_suffix_contradicts(run, store, tmp_path, name, fmt, message):
    out = tmp_path / name
    args = ["predict", run, "--store", store, "--out", out] + (["--format", fmt] if fmt else [])
    assert message in one_line_error(invoke(*args))
    assert not out.exists()


def test_yt8m_labels_that_are_indices_need_no_vocabulary(tmp_path):
    # Labelled as a store imported from YouTube-8M is: labels are vocabulary indices.
    videos = [
        (vid, x, tuple(lbl.removeprefix("class") + "0" for lbl in labels))
        for vid, x, labels in cluster_videos(12, n_classes=3)
    ]
    indexed = write_store(tmp_path / "i.zarr", videos, dim=16, attrs={"backbone": "synthetic"})
    out = tmp_path / "r"
    trained = invoke("-q", "train", indexed, "-m", "logistic", "-o", out, "--epochs", "1")
    assert trained.exit_code == 0, trained.output
    sub = tmp_path / "sub.csv"
    result = invoke("predict", out, "--store", indexed, "--format", "yt8m", "--out", sub)
    assert result.exit_code == 0, result.output
    pairs = pd.read_csv(sub)["LabelConfidencePairs"][0].split(" ")
    assert {int(i) for i in pairs[::2]} == {0, 10, 20}


# ------------------------------------------------------------------------------ damaged runs


def test_report_on_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    line = one_line_error(invoke("report", tmp_path / "empty", "--out", tmp_path / "rep"))
    assert "neither a heads run nor an ensemble" in line and not (tmp_path / "rep").exists()


def test_report_on_a_truncated_predictions_file(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    npz = copy / "test_predictions.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    line = one_line_error(invoke("report", copy, "--out", tmp_path / "rep"))
    assert "test_predictions.npz" in line


class Payload:
    """Any class a checkpoint should not hold: unpickling it would import and run code."""


def test_a_malicious_checkpoint_is_refused_in_one_line(run, store, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    torch.save({"format": 1, "payload": Payload()}, copy / "best.pt")
    line = one_line_error(invoke("evaluate", copy))
    assert str(copy / "best.pt") in line and "refused" in line
    assert "weights_only" not in line


def test_a_run_killed_while_writing_its_header_starts_afresh(store, tmp_path):
    # config.json marks a run: written first, a SIGKILL before split.csv (no cleanup runs)
    # left a run that asked for --resume, which then failed on the missing split.csv.
    import subprocess
    import sys

    out = tmp_path / "k"
    args = ["-q", "train", str(store), "-m", "logistic", "-o", str(out), *SMALL]
    script = (
        "import os, signal, sys\n"
        "import heads.run\n"
        "heads.run.save_splits = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from vidfeat_cli.heads import main\n"
        "main(sys.argv[1:])\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, *args], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    assert (out / "label_map.json").exists() and not (out / "config.json").exists()
    result = invoke(*args)
    assert result.exit_code == 0, result.output


def test_an_evaluation_checkpointed_but_not_logged_reaches_the_loggers_on_resume(store, tmp_path):
    # last.pt is written before the loggers hear of its evaluation: a SIGKILL in between lost
    # that row from metrics.csv and TensorBoard for good, since a resumed run went on after it.
    import subprocess
    import sys
    import time

    out = tmp_path / "k"
    args = ["-q", "train", str(store), "-m", "logistic", "-o", str(out), "--epochs", "2"]
    script = (
        "import os, signal, sys\n"
        "import heads.trainer as t\n"
        "save = t.ck.save_checkpoint\n"
        "def killed_after_the_second_last_pt(path, state):\n"
        "    save(path, state)\n"
        "    if path.name == 'last.pt' and state['epoch'] == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "t.ck.save_checkpoint = killed_after_the_second_last_pt\n"
        "from vidfeat_cli.heads import main\n"
        "main(sys.argv[1:])\n"
    )
    args += ["--logger", "csv", "--logger", "tensorboard"]
    killed = subprocess.run([sys.executable, "-c", script, *args])
    assert killed.returncode == -9
    assert len(pd.read_csv(out / "metrics.csv")) == 1  # epoch 2 checkpointed, not logged
    # TensorBoard reads event files in name order, whose first field is the time in seconds:
    # a resume within the killed run's second could be read before it.
    time.sleep(1.1)
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    logged = pd.read_csv(out / "metrics.csv")
    assert logged["epoch"].tolist() == [1, 2]
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged["val_loss"].tolist() == pytest.approx([r["val_loss"] for r in jsonl])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [1, 2]


def test_classes_take_a_json_list_for_labels_with_commas():
    from vidfeat_cli.heads_options import build_config

    # Labels may hold commas (README); comma-separated --classes could not name them.
    listed = build_config({"model": "logistic", "classes": '["black, cat", " dog "]'})
    assert listed.data.classes == ("black, cat", "dog")
    plain = build_config({"model": "logistic", "classes": "black, cat"})
    assert plain.data.classes == ("black", "cat")
    for bad, message in (('["a", 1]', "names"), ('["a"', "not a JSON list")):
        with pytest.raises(ConfigError, match=message):
            build_config({"model": "logistic", "classes": bad})
