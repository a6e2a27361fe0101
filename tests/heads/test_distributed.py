"""Data-parallel training: real ``torchrun`` jobs of 2 gloo ranks on 127.0.0.1.

The torchrun runs are compared with single-process runs at the same global batch (the
tolerance documented in README's "Several GPUs or processes" section), killed with SIGKILL
and resumed.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from heads import checkpoint as ck
from heads.batching import BucketBatchSampler
from heads.config import HeadConfig, TrainConfig
from heads.distributed import (
    DistributedBucketBatchSampler,
    loss_scale,
    skips_parameters,
    videos_counted,
    videos_in_step,
)
from heads.models.base import CLASSIFIERS, FUSION_LAYERS, HEADS, create_head
from heads.run import train_run
from heads.synthetic import write_sum_store
from tests.heads.stores import make_cluster_store
from tests.ports import free_port
from vidfeat.errors import ConfigError
from vidfeat_cli.heads import main

REPO = Path(__file__).resolve().parents[2]
# The documented tolerance of N ranks x batch B against one process x batch N*B: only the
# order of float additions differs (gradient all-reduce, per-slice loss means, padding).
RTOL, ATOL = 1e-4, 1e-5
PER_RANK_BATCH = 4
# 43 training videos: the last batch of 8 has 3, split 2 + 1 between the ranks.
TRAIN = [
    "--model",
    "gru",
    "--hidden-size",
    8,
    "--fc-size",
    8,
    "--dropout",
    0,
    "--epochs",
    10,
    "--patience",
    0,
    "--seed",
    3,
    "--sampling",
    "random-crop",
    "--max-frames",
    8,
    "--bucket-batches",
    2,
]


# --------------------------------------------------------------------------- DDP wrapping


def _heads_to_build():
    for name in HEADS.names():
        for fusion in FUSION_LAYERS.names():
            for classifier in CLASSIFIERS.names():
                cfg = HeadConfig(fusion=fusion, classifier=classifier, hidden_size=8)
                try:
                    yield create_head(
                        name, input_dim=12, num_classes=4, cfg=cfg, streams={"rgb": 8, "a": 4}
                    )
                except ConfigError:
                    continue  # a combination the head refuses (the frame head: linear only)


def test_only_heads_declaring_it_leave_parameters_out_of_a_training_step():
    # DDP is told to search for parameters left out of a step only where a layer says it may
    # leave some out; without the search, any such parameter stalls the gradient all-reduce.
    torch.manual_seed(0)
    x, lengths = torch.randn(6, 9, 12), torch.tensor([9, 3, 5, 1, 9, 7])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 1, 0]), 4).float()
    built = skipping = 0
    for head in _heads_to_build():
        built += 1
        _, terms = head.train().training_losses(
            x, lengths, labels, torch.nn.functional.binary_cross_entropy_with_logits
        )
        sum(terms.values()).backward()
        left_out = [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]
        if skips_parameters(head):
            skipping += 1
        else:
            assert not left_out, (type(head).__name__, left_out)
    assert built >= 3 * len(HEADS.names()) and skipping >= 1  # lstm_moe routes its steps


# --------------------------------------------------------------------------- sampler (no ranks)


@pytest.mark.parametrize("weighted", [False, True])
def test_rank_slices_make_up_the_single_process_batches(weighted):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=43)
    weights = rng.random(43) if weighted else None
    kw = {"shuffle": True, "bucket_batches": 2, "seed": 5}
    kw["weights"] = None if weights is None else weights / weights.sum()
    single = BucketBatchSampler(lengths, 8, **kw)
    ranks = [DistributedBucketBatchSampler(lengths, 4, rank=r, size=2, **kw) for r in (0, 1)]
    for epoch in (1, 2):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        shares = [list(s) for s in ranks]
        assert len(shares[0]) == len(shares[1]) == len(single)  # every rank steps together
        for k, batch in enumerate(single):
            union = shares[0][k] + shares[1][k]
            assert sorted(union) == sorted(batch)  # the same videos, none twice or lost
            assert {len(shares[0][k]), len(shares[1][k])} <= {len(batch) // 2, -(-len(batch) // 2)}
            total = videos_in_step(ranks[0], epoch, k, len(shares[0][k]))
            assert total == len(batch)
            scales = [
                loss_scale(s, epoch, k, len(share[k]))
                for s, share in zip(ranks, shares, strict=True)
            ]
            assert sum(scales) == pytest.approx(2.0)  # DDP divides by 2: the batch mean
    ranks[1].set_start(3)
    assert list(ranks[1]) == shares[1][3:]  # a run resumed mid-epoch


@pytest.mark.parametrize(
    "n_ranks, n_videos, has_short", [(2, 43, False), (3, 38, True), (3, 29, True), (4, 9, False)]
)
def test_every_video_weighs_the_same_in_each_step_for_any_world(n_ranks, n_videos, has_short):
    # A batch with fewer videos than ranks hands the empty ranks a copy of its first video;
    # that copy must weigh nothing, in the gradient and in the videos counted.
    lengths = np.random.default_rng(2).integers(1, 60, size=n_videos)
    kw = {"shuffle": True, "bucket_batches": 2, "seed": 3}
    ranks = [
        DistributedBucketBatchSampler(lengths, 3, rank=r, size=n_ranks, **kw)
        for r in range(n_ranks)
    ]
    for s in ranks:
        s.set_epoch(1)
    shares = [list(s) for s in ranks]
    short = 0
    for k in range(len(shares[0])):
        weight: dict[int, float] = {}
        videos = {i for share in shares for i, _ in share[k]}
        short += len(videos) < n_ranks
        counted = 0
        for s, share in zip(ranks, shares, strict=True):
            local = len(share[k])
            scale = loss_scale(s, 1, k, local)  # on the rank's mean loss; DDP then averages
            for i, _ in share[k]:
                weight[i] = weight.get(i, 0.0) + scale / (n_ranks * local)
            counted += videos_counted(s, 1, k, local)
        assert weight == pytest.approx(dict.fromkeys(videos, 1 / len(videos)))
        assert counted == videos_in_step(ranks[0], 1, k, len(shares[0][k])) == len(videos)
    assert bool(short) == has_short  # a batch of fewer videos than ranks, where one is drawn


def test_evaluation_shares_partition_the_set_in_length_order():
    lengths = np.random.default_rng(1).integers(1, 60, size=21)
    shares = [
        list(DistributedBucketBatchSampler(lengths, 4, rank=r, size=2, shuffle=False))
        for r in (0, 1)
    ]
    seen = [i for share in shares for batch in share for i, _ in batch]
    assert sorted(seen) == list(range(21))
    for share in shares:
        for batch in share:
            index = [i for i, _ in batch]
            assert list(lengths[index]) == sorted(lengths[index])


def test_a_batch_smaller_than_the_world_fills_the_empty_ranks():
    ranks = [DistributedBucketBatchSampler([3], 2, rank=r, size=2, shuffle=True) for r in (0, 1)]
    assert [list(s) for s in ranks] == [[[(0, 0)]], [[(0, 0)]]]
    assert loss_scale(ranks[0], 0, 0, 1) + loss_scale(ranks[1], 0, 0, 1) == pytest.approx(2.0)


# --------------------------------------------------------------------------- torchrun jobs


def _torchrun(args, module: str = "vidfeat_cli.heads", **env) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        module,
        "-q",
        *map(str, args),
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    # DDP searches for parameters left out of a step only for heads that may leave some out
    # (routed experts); torch warns when the search finds none, as it did for every head.
    assert "find_unused_parameters" not in err.decode()
    return out.decode()


def _single(args) -> None:
    result = CliRunner().invoke(main, ["-q", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _records(run: Path) -> list[dict]:
    lines = (run / ck.METRICS).read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "wall_s"} for x in lines]


def _assert_close_runs(a: Path, b: Path, rtol: float = RTOL, atol: float = ATOL) -> None:
    ra, rb = _records(a), _records(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):
                assert x[key] == pytest.approx(y[key], rel=rtol, abs=atol), key
            else:
                assert x[key] == y[key], key
    wa, wb = (ck.load_checkpoint(r / ck.BEST)["model_state"] for r in (a, b))
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=rtol, atol=atol)
    ta, tb = (json.loads((r / ck.TEST_METRICS).read_text()) for r in (a, b))
    for key in ("hit_at_1", "gap_at_20", "mean_ap", "best_epoch", "n_test"):
        assert ta[key] == pytest.approx(tb[key], rel=rtol, abs=atol), key


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One store; a 2-rank run with batch 4 and a single-process run with batch 8."""
    root = tmp_path_factory.mktemp("ddp")
    store = make_cluster_store(root / "s.zarr", n_videos=60, signal=0.4)
    ddp = _torchrun(["train", store, *TRAIN, "--batch-size", PER_RANK_BATCH, "--out", root / "ddp"])
    _single(["train", store, *TRAIN, "--batch-size", 2 * PER_RANK_BATCH, "--out", root / "one"])
    printed = _finish(ddp)
    return {"root": root, "store": store, "printed": printed}


def test_two_ranks_match_one_process_at_the_same_global_batch(runs):
    root = runs["root"]
    _assert_close_runs(root / "ddp", root / "one")
    assert runs["printed"].count("test (12 videos)") == 1  # rank 0 reports, once
    saved = ck.load_checkpoint(root / "ddp" / ck.LAST)
    assert saved["world_size"] == 2 and len(saved["rng_ranks"]) == 2
    assert _records(root / "ddp")[0]["examples"] == 43  # every training video, once
    # Only rank 0 writes: the same files as a single-process run, no leftovers.
    assert sorted(p.name for p in (root / "ddp").iterdir()) == sorted(
        p.name for p in (root / "one").iterdir()
    )


def test_finetune_under_torchrun_matches_one_process(runs):
    root, store = runs["root"], runs["store"]
    tune = ["--train", "top", "--epochs", 3, "--seed", 4]
    ddp = _torchrun(
        ["finetune", root / "one", "--store", store, *tune, "--batch-size", PER_RANK_BATCH,
         "--out", root / "tune-ddp"]
    )  # fmt: skip
    _single(
        ["finetune", root / "one", "--store", store, *tune, "--batch-size", 2 * PER_RANK_BATCH,
         "--out", root / "tune-one"]
    )  # fmt: skip
    _finish(ddp)
    _assert_close_runs(root / "tune-ddp", root / "tune-one")
    info = json.loads((root / "tune-ddp" / ck.CONFIG).read_text())["finetune"]
    assert info["train"] == "top"


def test_projection_fusion_under_torchrun_matches_one_process(runs):
    # Its term was a mean over each rank's frames while the ranks weigh their slices by videos:
    # 0.3% apart on the term, up to 0.08 on val mAP. Per video, it adds up exactly.
    root = runs["root"]
    store = write_sum_store(root / "sum.zarr", 60, dims={"rgb": 6, "audio": 3})
    fused = [*TRAIN[: TRAIN.index("--epochs")], "--epochs", 3, "--patience", 0, "--seed", 3]
    fused += ["--fusion", "projection", "--fusion-dim", 4, "--fusion-weight", 1.0]
    ddp = _torchrun(
        ["train", store, *fused, "--batch-size", PER_RANK_BATCH, "--out", root / "fp-ddp"]
    )
    _single(["train", store, *fused, "--batch-size", 2 * PER_RANK_BATCH, "--out", root / "fp-one"])
    _finish(ddp)
    assert "train_fusion_l2" in _records(root / "fp-one")[0]
    _assert_close_runs(root / "fp-ddp", root / "fp-one")


def test_frame_head_under_torchrun_matches_one_process(runs):
    # Its loss is a mean over frames: the ranks' slices must weigh their frames, not their
    # videos (and the projection term its videos), or the step is not the batch's.
    root = runs["root"]
    store = write_sum_store(root / "frames.zarr", 60, dims={"rgb": 6, "audio": 3})
    args = [*TRAIN[: TRAIN.index("--epochs")], "--epochs", 3, "--patience", 0, "--seed", 3]
    args += ["--model", "frame", "--fusion", "projection", "--fusion-dim", 4]
    args += ["--fusion-weight", 1.0, "--sampling", "head", "--max-frames", 40]
    ddp = _torchrun(["train", store, *args, "--batch-size", PER_RANK_BATCH, "--out", root / "f2"])
    _single(["train", store, *args, "--batch-size", 2 * PER_RANK_BATCH, "--out", root / "f1"])
    _finish(ddp)
    assert "train_fusion_l2" in _records(root / "f1")[0]
    _assert_close_runs(root / "f2", root / "f1")


def _epochs_done(run: Path) -> int:
    try:
        return len((run / ck.METRICS).read_text().splitlines())
    except FileNotFoundError:
        return 0


def _worker(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the worker process of ``rank`` that torchrun started."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} among {children}")


def test_sigkill_of_one_rank_fails_the_job_and_resume_finishes_it(runs):
    root, store = runs["root"], runs["store"]
    run = root / "killed"
    args = ["train", store, *TRAIN, "--batch-size", PER_RANK_BATCH, "--out", run]
    job = _torchrun(args, HEADS_DIST_TIMEOUT_S="60")
    deadline = time.monotonic() + 240
    while _epochs_done(run) < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.poll() is None, "the job ended before it could be killed"
    os.kill(_worker(job, 1), signal.SIGKILL)
    _, err = job.communicate(timeout=180)  # torchrun stops rank 0 and fails
    assert job.returncode != 0
    assert b"SIGKILL" in err or b"Signal 9" in err, err.decode()[-2000:]
    # Rank 0 says what happened and what to do (unless torchrun's SIGTERM reached it first),
    # never "internal error ... a bug".
    assert b"internal error" not in err, err.decode()[-2000:]
    told = b"another rank of this torchrun job died" in err or b"interrupted:" in err
    assert told and b"--resume" in err, err.decode()[-2000:]
    assert not (run / ck.TEST_METRICS).exists()
    assert 1 <= ck.load_checkpoint(run / ck.LAST)["epoch"] < 10
    # One process cannot continue a 2-rank run: its batches would be others.
    cfg = TrainConfig.from_dict(
        {k: v for k, v in ck.read_json(run / ck.CONFIG).items() if k != "store"}
    )
    with pytest.raises(ConfigError, match="2 rank"):
        train_run(store, cfg, run, resume=True)
    _finish(_torchrun([*args, "--resume"]))
    # The resumed job ends exactly where the uninterrupted one did.
    assert _records(run) == _records(root / "ddp")
    _assert_close_runs(run, root / "ddp", rtol=0, atol=0)


def test_scores_diverging_on_rank_0_stop_every_rank_with_the_same_verdict(tmp_path):
    # Only rank 0 scores the validation set. It stopped alone, and rank 1 then failed as if
    # rank 0 had died ("rerun the same command"), which would only diverge again.
    from vidfeat.store import create_store

    rng = np.random.default_rng(0)
    extreme = np.tile(np.array([3e38, -3e38] * 8, np.float32), (4, 1))  # finite, overflow a sum
    with create_store(tmp_path / "s.zarr", streams={"rgb": 16}) as w:
        for i in range(32):
            split = "train" if i < 20 else "val" if i < 26 else "test"
            x = extreme if split == "val" else rng.normal(size=(4, 16)).astype(np.float32)
            w.write(f"v{i}", {"rgb": x}, timestamps=range(4), labels=["ab"[i % 2]], split=split)
    job = _torchrun(["train", tmp_path / "s.zarr", "-m", "logistic", "-o", tmp_path / "run"])
    _, err = job.communicate(timeout=180)
    assert job.returncode != 0
    text = err.decode()
    assert text.count("error: training diverged at epoch 1/") == 2, text[-2000:]
    assert "another rank of this torchrun job died" not in text, text[-2000:]


def test_ranks_that_read_different_data_all_stop_before_training(tmp_path):
    # Each rank opens the store itself: one still being written gave rank 0 80 videos and
    # rank 1 82, and each drew batches from its own list (some videos trained twice, some
    # never), then ended with exit 0 or an "internal error". Here rank 1's store holds two
    # more videos than rank 0's, at the same relative path.
    for rank, n in enumerate((24, 26)):
        (tmp_path / f"r{rank}").mkdir()
        make_cluster_store(tmp_path / f"r{rank}" / "s.zarr", n_videos=n, signal=0.4)
    cwd = {f"RANK_CWD_{rank}": str(tmp_path / f"r{rank}") for rank in range(2)}
    args = ["train", "s.zarr", "-m", "logistic", "--epochs", "1", "-o", tmp_path / "run"]
    job = _torchrun(args, module="tests.heads.rank_cwd", **cwd)
    _, err = job.communicate(timeout=180)
    text = err.decode()
    assert job.returncode != 0
    assert text.count("the ranks of this torchrun job read different data") == 2, text[-3000:]
    assert "rank 0: {'train'" in text and "rank 1: {'train'" in text
    assert not (tmp_path / "run").exists()  # nothing trained, nothing kept


def _rank_of_on_every_rank(rank: int, port: int, out: str) -> None:
    """One rank of a 2-rank gloo group: rank 1 fails inside ``on_every_rank``."""
    from heads import distributed as dd

    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port), HEADS_DIST_TIMEOUT_S="60",
    )  # fmt: skip

    def load() -> str:
        if rank == 1:
            raise ConfigError("classes not found in the store's videos: ['c']")
        return "data"

    started = time.monotonic()
    with dd.session("cpu"):
        try:
            said = f"returned {dd.on_every_rank(load)}"
        except Exception as exc:
            said = f"{type(exc).__name__}: {exc}"
    Path(out, f"rank{rank}.txt").write_text(f"{said}\n{time.monotonic() - started:.1f}")


def test_an_error_on_one_rank_stops_every_rank_at_once(tmp_path):
    # Reading the store is each rank's own step: a rank that failed there exited, and on
    # another node the others waited at the next collective for the whole timeout (600 s),
    # then ended with "internal error: DistStoreError ... This is a bug".
    torch.multiprocessing.spawn(
        _rank_of_on_every_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True
    )
    (said0, took0), (said1, _) = (
        (tmp_path / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)
    )
    assert said1 == "ConfigError: classes not found in the store's videos: ['c']"
    assert said0 == (
        "RankLost: rank 1 of this torchrun job stopped: "
        "classes not found in the store's videos: ['c']"
    )
    assert float(took0) < 30  # the verdict, not the 60-s timeout
