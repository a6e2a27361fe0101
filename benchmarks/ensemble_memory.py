"""`heads ensemble` and `heads report` at YouTube-8M's class count: peak memory and time of
ensembling R runs' test scores of N videos (or of reporting on one run), for growing N.

Each run directory holds what training leaves (``test_predictions.npz`` written by
``PredictionsWriter``, ``label_map.json``, ``config.json``, ``metrics.jsonl``), with random
normal ranking scores (sigmoid outputs) and 3 random labels per video of ``--classes``. Each
ensemble (report) runs in its own process, whose peak RSS (ru_maxrss) is the figure; the hashes
of its output files are recorded (of a report, the tables of its ``report.md``: the numbers,
not the prose around them or the figures' bytes).

``--before DIR``: also run the ensemble with the ``heads`` package of another checkout (e.g.
``git worktree add DIR <commit>``), on the same runs; both must write the same bytes. The JSON
records that checkout's commit.

    python -m benchmarks.ensemble_memory          # -> benchmarks/results/ensemble_memory.json
    python -m benchmarks.ensemble_memory --what report --runs 1   # -> results/report_memory.json
    python -m benchmarks.ensemble_memory --videos 2000 --classes 500    # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 256


def write_runs(folder: Path, n: int, classes: int, runs: int) -> list[Path]:
    """``runs`` run directories of ``n`` test videos each, the same videos and labels."""
    from heads import checkpoint as ck
    from heads.labels import LabelMap
    from heads.predictions import PredictionsWriter, Scored

    label_map = LabelMap(tuple(f"class{i}" for i in range(classes)), multilabel=True)
    ids = [f"v{i:07d}" for i in range(n)]
    dirs = []
    for r in range(runs):
        run = folder / f"run{r}"
        run.mkdir()
        with PredictionsWriter(run / ck.TEST_PREDICTIONS, ids, label_map) as writer:
            for start in range(0, n, BATCH):
                rows = np.arange(start, min(n, start + BATCH))
                labels = np.zeros((len(rows), classes), np.float32)
                picks = np.random.default_rng(start).integers(0, classes, (len(rows), 3))
                labels[np.arange(len(rows))[:, None], picks] = 1
                ranking = np.random.default_rng([r, start]).standard_normal(
                    (len(rows), classes), dtype=np.float32
                )
                probs = (1 / (1 + np.exp(-ranking))).astype(np.float32)
                writer.add(rows, Scored(probs=probs, ranking=ranking, labels=labels))
        ck.write_json(run / ck.LABEL_MAP, label_map.to_dict())
        ck.write_json(run / ck.CONFIG, {"loss": "multi"})
        record = {"epoch": 1, "improved": True, "val_gap_at_20": 0.5 + 0.1 * r}
        (run / ck.METRICS).write_text(json.dumps(record) + "\n")
        dirs.append(run)
    return dirs


def child(what: str, runs: list[str], out: str) -> dict:
    """One ensemble (report) in this process (whichever ``heads`` is on the path)."""
    import heads

    started = time.perf_counter()
    if what == "ensemble":
        from heads.ensemble import ensemble_runs

        gap = ensemble_runs(runs, out, "gap")["gap_at_20"]
        compared = sorted(Path(out).iterdir())
    else:
        from heads.report import write_report

        report = write_report([Path(r) for r in runs], Path(out))
        tables = [line for line in report.read_text().splitlines() if line.startswith("|")]
        gap, compared = None, []
    took = time.perf_counter() - started
    digests = {}
    for path in compared:
        with path.open("rb") as fh:  # in pieces: not held whole
            digests[path.name] = hashlib.file_digest(fh, "sha256").hexdigest()
    if what == "report":
        digests["report.md tables"] = hashlib.sha256("\n".join(tables).encode()).hexdigest()
    return {
        "seconds": took,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gap_at_20": gap,
        "files": digests,
        "heads": str(Path(heads.__file__).resolve().parent),
    }


def _commit(checkout: Path) -> str:
    """The commit a checkout holds (recorded instead of its path)."""
    cmd = ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", default="5000,10000,20000")
    p.add_argument("--classes", type=int, default=3862)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--what", choices=("ensemble", "report"), default="ensemble")
    p.add_argument("--before", type=Path, help="another checkout whose heads to run too")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # out run...
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.what, args.child[1:], args.child[0])))
        return
    from benchmarks.common import RESULTS, machine_info, save_json

    codes = {"now": None} | ({"before": args.before.resolve()} if args.before else {})
    rows = []
    for n in map(int, args.videos.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            runs = write_runs(Path(tmp), n, args.classes, args.runs)
            found = {}
            for way, code in codes.items():
                env = dict(os.environ)
                if code is not None:  # its heads (and vidfeat) first on the path
                    env["PYTHONPATH"] = os.pathsep.join(
                        filter(None, [str(code), env.get("PYTHONPATH")])
                    )
                out = Path(tmp) / f"{args.what}-{way}"
                # Run as a script: the child imports nothing of benchmarks, only heads.
                script = str(Path(__file__).resolve())
                cmd = [sys.executable, script, "--what", args.what, "--child", str(out)]
                result = subprocess.run(
                    [*cmd, *map(str, runs)], check=True, capture_output=True, text=True, env=env
                )
                found[way] = json.loads(result.stdout.strip().splitlines()[-1])
                used = Path(found[way].pop("heads"))
                if code is not None and not used.is_relative_to(code):
                    raise SystemExit(f"the {way} {args.what} ran {used}, not {code}'s heads")
                rows.append({"way": way, "videos": n, **found[way]})
                print(rows[-1], flush=True)
            if len({json.dumps(f["files"], sort_keys=True) for f in found.values()}) != 1:
                raise SystemExit(f"the {args.what} outputs differ at {n} videos: {found}")
    out = save_json(
        RESULTS / f"{args.what}_memory.json",
        {
            "machine": machine_info(),
            "settings": vars(args) | {"before": _commit(args.before) if args.before else None},
            "load_average_1_5_15": os.getloadavg(),
            "results": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
