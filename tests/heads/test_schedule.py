"""Training counted in steps: --max-steps, --eval-every (checkpoints and resume mid-epoch),
learning-rate decay by examples, positive weights, class-balanced sampling, flat memory."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from heads import checkpoint as ck
from heads.batching import BucketBatchSampler, balanced_weights
from heads.config import DataConfig, TrainConfig
from heads.inference import load_run
from heads.labels import MultiHot
from heads.models import HeadConfig
from heads.objective import Loss
from heads.run import train_run
from heads.synthetic import write_store
from tests.heads.stores import make_cluster_store
from tests.heads.test_trainer import _epochs_done, _heads
from vidfeat.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / ck.METRICS).read_text().splitlines()]


def test_eval_every_and_max_steps_count_steps_across_epochs(tmp_path):
    store = make_cluster_store(tmp_path / "s.zarr", n_videos=40)
    cfg = TrainConfig(
        model="logistic",
        epochs=100,
        max_steps=17,
        eval_every=5,
        lr_decay_examples=30,
        lr_gamma=0.5,
        data=DataConfig(batch_size=4, bucket=False),
    )
    metrics = train_run(store, cfg, tmp_path / "run")
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records] == [5, 10, 15, 17]  # the last window is shorter
    assert metrics["steps_run"] == 17
    assert len(load_run(tmp_path / "run").checkpoint["history"]) == 4
    assert records[-1]["epoch"] >= 2  # windows ran across epoch boundaries
    # The lr logged is the window's last step's: lr0 * gamma ** (videos seen before that step
    # // 30), those videos being 1 to 4 fewer than the window's end (batches of 4, one of 1).
    for r in records:
        assert r["lr"] in {1e-3 * 0.5 ** (n // 30) for n in range(r["examples"] - 4, r["examples"])}
    assert records[-1]["lr"] < 1e-3
    last = ck.load_checkpoint(tmp_path / "run" / ck.LAST)
    assert last["position"]["step"] == 17


def test_resume_after_sigkill_mid_epoch_with_eval_every(tmp_path):
    path = make_cluster_store(tmp_path / "s.zarr", n_videos=48, signal=0.4)
    args = [path, "--model", "gru", "--hidden-size", 16, "--fc-size", 16, "--seed", 3]
    args += ["--epochs", 100, "--max-steps", 40, "--eval-every", 3, "--patience", 0]
    args += ["--batch-size", 8, "--sampling", "random-crop", "--max-frames", 8]
    args += ["--sampler", "balanced", "--lr-decay-examples", 50, "--lr-gamma", 0.7]
    full = _heads([*args, "--out", tmp_path / "full"])
    killed_run = tmp_path / "killed"
    victim = _heads([*args, "--out", killed_run])
    deadline = time.monotonic() + 300
    while _epochs_done(killed_run) < 3 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    position = ck.load_checkpoint(killed_run / ck.LAST)["position"]
    assert 3 <= position["step"] < 40
    resumed = _heads([*args, "--out", killed_run, "--resume"])
    for proc in (resumed, full):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()

    def strip(records):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]

    full_records = _records(tmp_path / "full")
    assert [r["step"] for r in full_records] == [*range(3, 40, 3), 40]
    assert any(r["epoch"] == full_records[i + 1]["epoch"] for i, r in enumerate(full_records[:-1]))
    assert strip(_records(killed_run)) == strip(full_records)
    best = {name: ck.load_checkpoint(tmp_path / name / ck.BEST) for name in ("full", "killed")}
    for key, tensor in best["full"]["model_state"].items():
        assert torch.equal(tensor, best["killed"]["model_state"][key])


def test_checkpoints_without_step_fields_still_load_and_resume(tmp_path):
    store = make_cluster_store(tmp_path / "s.zarr", n_videos=30)
    cfg = TrainConfig(model="gru", epochs=3, head=HeadConfig(hidden_size=8, fc_size=8))
    train_run(store, cfg.replace(epochs=2), tmp_path / "run")
    # Rewrite the run as an older version wrote it (no position, no new config fields),
    # killed after epoch 2 of 3.
    new_train = ("max_steps", "eval_every", "lr_decay_examples", "rmsprop_decay", "pos_weight")
    new_head = ("classifier", "moe_experts", "moe_top_k", "expert_size", "frame_distance")
    new_head += ("moe_importance_weight", "moe_load_weight")
    for name in (ck.BEST, ck.LAST):
        state = ck.load_checkpoint(tmp_path / "run" / name)
        state.pop("position")
        for key in new_train:
            state["train_config"].pop(key)
        state["train_config"]["data"].pop("sampler")
        for key in new_head:
            state["head_config"].pop(key)
            state["train_config"]["head"].pop(key)
        ck.save_checkpoint(tmp_path / "run" / name, state)
    run = load_run(tmp_path / "run")
    assert run.cfg.max_steps == 0 and run.cfg.head.classifier == "linear"
    config = json.loads((tmp_path / "run" / ck.CONFIG).read_text())
    for key in new_train:
        config.pop(key)
    config["epochs"] = 3  # as if a 3-epoch run had been killed after epoch 2
    (tmp_path / "run" / ck.CONFIG).write_text(json.dumps(config))
    (tmp_path / "run" / ck.TEST_METRICS).unlink()  # killed: it never reached its test results
    train_run(store, cfg, tmp_path / "run", resume=True)
    records = _records(tmp_path / "run")
    assert [r["epoch"] for r in records] == [1, 2, 3]  # continued after epoch 2, not from 1


def test_pos_weight_scales_only_the_positive_terms():
    logits = torch.randn(6, 3)
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    w = torch.tensor([1.0, 2.0, 4.0])
    plain, pos, cls = Loss(True), Loss(True, pos_weight=w), Loss(True, weight=w)
    negatives = torch.zeros(6, 3)
    assert torch.equal(pos(logits, negatives), plain(logits, negatives))  # only positives move
    assert not torch.equal(cls(logits, negatives), plain(logits, negatives))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (-(w * labels * torch.nn.functional.logsigmoid(logits))).mean() + (
        -((1 - labels) * torch.nn.functional.logsigmoid(-logits))
    ).mean()
    torch.testing.assert_close(pos(logits, labels), expected)
    assert bce(logits, labels) < pos(logits, labels)


def test_balanced_sampler_draws_classes_equally():
    targets = np.zeros((100, 2), np.float32)
    targets[:90, 0] = 1.0
    targets[90:, 1] = 1.0
    weights = balanced_weights(MultiHot.from_dense(targets))
    np.testing.assert_allclose((weights[:, None] * targets).sum(axis=0), [0.5, 0.5])
    sampler = BucketBatchSampler(np.full(100, 5), 10, shuffle=True, seed=1, weights=weights)
    drawn = []
    for epoch in range(1, 21):
        sampler.set_epoch(epoch)
        drawn += [i for batch in sampler for i, _ in batch]
    share_rare = np.mean(np.array(drawn) >= 90)
    assert len(drawn) == 20 * 100 and 0.45 < share_rare < 0.55  # 0.10 without balancing
    sampler.set_epoch(3)
    again = [i for batch in sampler for i, _ in batch]
    assert again == drawn[200:300]  # a pure function of (seed, epoch)
    sampler.set_start(4)
    assert [i for batch in sampler for i, _ in batch] == again[40:]


def test_conflicting_decays_are_refused():
    with pytest.raises(ConfigError, match="one decay"):
        TrainConfig(model="gru", lr_step=2, lr_decay_examples=100)


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_memory_stays_flat_over_a_long_epoch_free_run(tmp_path):
    # 512-d frames make leaks visible: keeping every video read grows RSS by ~10 MiB per
    # evaluation here, keeping one batch per step by ~12 MiB.
    rng = np.random.default_rng(0)
    videos = (
        (
            f"v{i:05d}",
            rng.normal(size=(int(rng.integers(2, 6)), 512)).astype(np.float32),
            (f"c{i % 4}",),
        )
        for i in range(2000)
    )
    store = write_store(tmp_path / "many.zarr", videos, dim=512, attrs={"backbone": "synthetic"})
    args = [store, "--model", "logistic", "--batch-size", 8, "--epochs", 1000]
    args += ["--max-steps", 1500, "--eval-every", 150, "--val-fraction", 0.05]
    args += ["--test-fraction", 0.05, "--out", tmp_path / "run"]
    proc = _heads(args)
    samples: list[tuple[int, int]] = []  # (evaluations done, RSS KiB)

    def watch() -> None:
        while proc.poll() is None:
            rss = _rss_kib(proc.pid)
            if rss is not None:
                samples.append((_epochs_done(tmp_path / "run"), rss))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    _, err = proc.communicate(timeout=900)
    watcher.join()
    assert proc.returncode == 0, err.decode()
    records = _records(tmp_path / "run")
    assert records[-1]["step"] == 1500 and records[-1]["epoch"] >= 6  # many epochs, by steps
    # From the second evaluation (everything imported and allocated once) to the last one
    # (after it, the test split is scored: another phase, not the training loop).
    warm = [rss for done, rss in samples if done == 2]
    later = [rss for done, rss in samples if 3 <= done < len(records)]
    assert warm and later
    growth_mib = (max(later) - max(warm)) / 1024
    by_eval = {done: rss // 1024 for done, rss in samples}
    assert growth_mib < 10, f"RSS grew {growth_mib:.1f} MiB; MiB by evaluation: {by_eval}"
