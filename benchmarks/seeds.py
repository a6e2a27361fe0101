"""The seed recipes of docs/recipes.md, scaled down, on one store; the studies' claims checked.

Every recipe of ``benchmarks.recipes.RECIPES`` (except those marked ``bench=False``) runs as
the real ``heads train`` / ``heads ensemble`` command with its options scaled down by
``benchmarks.recipes.scaled_args``, so it fits a 2-core CPU machine:

- widths (recurrent units, FC blocks, expert units, fusion and attention widths) / 16, at
  least 8; sparse-MoE experts / 8 (64 -> 8) and top-k / 2 (4 -> 2);
- videos per batch / 8 (at least 8); optimizer steps and evaluation intervals / 100; the
  examples per learning-rate decay / 800 (the same number of decays per run);
- frame counts (max frames, skipped intro frames, late-fusion distance) / 5;
- a recipe counted in steps stays counted in steps; no run takes more than 1000 steps.

Everything else (model, layers, reduction, fusion, optimizer, learning rate, loss, dropout,
sampling, patience) is the recipe's own. Each run records test hit@1, GAP@20, mAP, trainable
parameters, steps and wall time; ``lstm_moe`` also its last ``moe_max_load_ratio``. The
studies' relative claims (``CLAIMS``) are listed beside the measured values with whether the
scaled-down runs agree; nothing is assumed, every figure comes from the runs.

Without STORE, a synthetic two-stream store is written (``heads.synthetic``'s order-and-sound
task: rgb carries the order of two events, audio a digit, the label needs both; every video
opens with 4 uninformative intro frames, so 16-22 frames, which the scaled frame counts
cover). On it, chance is 1/8, one stream alone reaches at most 1/2 and an order-blind head 1/2.

    python -m benchmarks.seeds                       # synthetic store, every recipe
    python -m benchmarks.seeds STORE --only zhao     # a store of yours, one study
    python -m benchmarks.seeds --save                # also write results/seeds.json
    python -m benchmarks.seeds --smoke               # seconds per recipe: proves it runs
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from benchmarks.common import mean_std, work_dir, write_result
from benchmarks.recipes import CLAIMS, RECIPES, STEP_CAP, Claim, Recipe, scaled_args

log = logging.getLogger("benchmarks.seeds")
SYNTHETIC_VIDEOS = 480  # 60 per class
SMOKE = {"videos": 64, "step_cap": 12}
METRICS = ("hit_at_1", "gap_at_20", "mean_ap")


def selected(only: list[str] | None) -> list[Recipe]:
    """Bench recipes whose name or study is in ``only`` (all when None), members before
    their ensembles."""
    chosen = [
        r for r in RECIPES.values() if r.bench and (not only or r.name in only or r.study in only)
    ]
    names = {r.name for r in chosen}
    for r in list(chosen):
        for member in r.members:
            if member not in names:
                chosen.insert(0, RECIPES[member])
                names.add(member)
    return sorted(chosen, key=lambda r: r.is_ensemble)


def run_heads(args: list[str]) -> None:
    """One `heads` command, in this process, exactly as the CLI parses it."""
    from vidfeat_cli.heads import main

    try:
        main.main(args=["-q", *args], standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"heads {' '.join(args)} exited {exc.code}") from exc


def last_load_ratio(run_dir: Path) -> float | None:
    """moe_max_load_ratio of the last evaluation in metrics.jsonl (None for other heads)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    values = [r.get("moe_max_load_ratio") for r in lines if "moe_max_load_ratio" in r]
    return values[-1] if values else None


def run_recipe(recipe: Recipe, store: Path, runs: Path, seed: int, step_cap: int) -> dict:
    out = runs / f"{recipe.name}-s{seed}"
    if recipe.is_ensemble:
        members = [str(runs / f"{m}-s{seed}") for m in recipe.members]
        args = ["ensemble", *members, "--out", str(out), *recipe.args]
    else:
        options = scaled_args(recipe.args, step_cap)
        args = ["train", str(store), "--out", str(out), *options, "--seed", str(seed)]
        args += ["--no-progress", "--force", "--device", "cpu"]
    start = time.perf_counter()
    run_heads(args)
    wall_s = time.perf_counter() - start
    metrics = json.loads((out / "test_metrics.json").read_text())
    # The recorded command names the store and runs by file name only: no machine paths.
    shown = [Path(a).name if a.startswith(str(runs.parent)) else a for a in args[1:]]
    row = {"recipe": recipe.name, "study": recipe.study, "seed": seed, "args": shown}
    row |= {k: metrics.get(k) for k in (*METRICS, "trainable_params", "best_step", "steps_run")}
    row |= {"wall_s": round(wall_s, 2), "moe_max_load_ratio": last_load_ratio(out)}
    log.info("%s seed %d: hit@1 %.3f GAP %.3f (%.1f s)", recipe.name, seed,
             row["hit_at_1"], row["gap_at_20"], wall_s)  # fmt: skip
    return row


def summarise(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per recipe: mean and std over seeds of every measured value."""
    keys = (*METRICS, "moe_max_load_ratio", "best_step", "trainable_params", "wall_s")
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == name]
        out[name] = {k: mean_std([r[k] for r in mine]) for k in keys}
    return out


def check_claim(claim: Claim, summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The claim beside the measured means; ``agrees`` is None when a run is missing.

    A claim that one run beats another is only confirmed by a strict win: an exact tie (both
    saturated, or both at the step cap) agrees with "at least as high" but shows nothing, so it
    is flagged ``tied`` and printed as such."""
    better = summary.get(claim.better, {}).get(claim.metric, {}).get("mean")
    worse = None
    if claim.worse is not None:
        worse = summary.get(claim.worse, {}).get(claim.metric, {}).get("mean")
    if better is None or (claim.limit is None and worse is None):
        agrees = None
    elif claim.limit is not None:
        agrees = better <= claim.limit
    elif claim.lower_is_better:
        agrees = better <= worse + claim.tolerance
    else:
        agrees = better >= worse - claim.tolerance
    tied = claim.limit is None and claim.tolerance == 0 and better is not None and better == worse
    return {
        "study": claim.study,
        "claim": claim.text,
        "tied": tied,
        "metric": claim.metric,
        "better": claim.better,
        "worse": claim.worse,
        "limit": claim.limit,
        "measured_better": better,
        "measured_worse": worse,
        "agrees": agrees,
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:.3f}"


def print_tables(summary: dict[str, dict[str, Any]], claims: list[dict]) -> None:
    print("| recipe | test hit@1 | GAP@20 | mAP | params | best step | wall s | max/mean load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in summary.items():
        cells = [_fmt(s[k]["mean"]) for k in (*METRICS, "trainable_params", "best_step")]
        cells += [_fmt(s["wall_s"]["mean"]), _fmt(s["moe_max_load_ratio"]["mean"])]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n| study | claim | metric | measured | agrees |")
    print("|---|---|---|---|---|")
    for c in claims:
        other = _fmt(c["limit"]) if c["limit"] is not None else _fmt(c["measured_worse"])
        measured = f"{c['better']} {_fmt(c['measured_better'])} vs {other}"
        agrees = {True: "yes", False: "no", None: "not run"}[c["agrees"]]
        agrees = "tie: shows nothing" if c.get("tied") else agrees
        print(f"| {c['study']} | {c['claim']} | {c['metric']} | {measured} | {agrees} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store", nargs="?", type=Path, help="default: a synthetic store")
    parser.add_argument("--only", nargs="+", help="recipe names or studies (zhao, akopyan, ...)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--work", type=Path, help="keep the store and runs here")
    parser.add_argument("--smoke", action="store_true", help="tiny store, a few steps per run")
    parser.add_argument("--save", action="store_true", help="write results/seeds.json")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    step_cap = SMOKE["step_cap"] if a.smoke else STEP_CAP
    recipes = selected(a.only)
    if not recipes:
        parser.error(f"no recipe matches {a.only}; names: {', '.join(RECIPES)}")
    n_videos = SMOKE["videos"] if a.smoke else SYNTHETIC_VIDEOS
    described = str(a.store) if a.store else f"synthetic order-and-sound, {n_videos} videos"
    with work_dir(a.work, "seeds-") as work:
        store = a.store or work / "order-sound.zarr"
        if a.store is None and not store.exists():
            from heads.synthetic import write_order_sound_store

            write_order_sound_store(store, n_videos)
        rows = [
            run_recipe(r, store, work / "runs", seed, step_cap) for seed in a.seeds for r in recipes
        ]
    summary = summarise(rows)
    claims = [check_claim(c, summary) for c in CLAIMS]
    print_tables(summary, claims)
    if a.save:
        path = write_result(
            "seeds",
            {
                "store": described,
                "seeds": a.seeds,
                "step_cap": step_cap,
                "runs": rows,
                "summary": summary,
                "claims": claims,
            },
        )
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
