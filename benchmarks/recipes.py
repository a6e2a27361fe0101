"""The seed recipes: each study's setup as `heads` options, defined once.

``RECIPES`` holds every recipe at the study's own scale; ``docs/recipes.md`` prints each one
as ``heads train STORE --out runs/NAME ARGS`` (a test checks the two agree and that every
command parses), and ``benchmarks.seeds`` runs them scaled down with :func:`scaled_args`.
``CLAIMS`` are the studies' relative findings that a scaled-down run can check.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

# ------------------------------------------------------------------------------ recipes


@dataclass(frozen=True)
class Recipe:
    name: str
    study: str  # key of STUDIES
    args: tuple[str, ...]  # `heads train` options at the study's scale (no STORE, no --out)
    members: tuple[str, ...] = ()  # an ensemble of these recipes' runs instead of a training
    bench: bool = True  # run by benchmarks.seeds (False: it needs data the seed store lacks)

    @property
    def is_ensemble(self) -> bool:
        return bool(self.members)


@dataclass(frozen=True)
class Study:
    title: str
    store: str  # the store path the recipe commands use


STUDIES = {
    "zhao": Study("Zhao: Deep Multimodal Learning (YouTube-8M, rgb + audio)", "yt8m.zarr"),
    "akopyan": Study("Akopyan & Khashba: YouTube-8M with LSTM_MoE", "yt8m.zarr"),
    "karpathy": Study("Karpathy et al.: Sports-1M fusion in time", "sports1m.zarr"),
    "newman": Study("Newman: video classification on UCF-101 (MSc thesis)", "ucf101.zarr"),
    "abramovich": Study("Abramovich et al.: low-complexity RNNs on 10 classes", "yt10.zarr"),
}


def _a(text: str) -> tuple[str, ...]:
    return tuple(shlex.split(text))


# Zhao gives Adam at 0.01, x0.95 decay per 4M examples, N(0, 0.01) fusion matrices, 2 stacked
# layers. Not given, our choices: 1024 units (the YouTube-8M LSTM baseline), batch 256,
# 300 frames, 100k steps with an evaluation every 1000.
_ZHAO = (
    "--num-layers 2 --hidden-size 1024 --optimizer adam --lr 0.01 --lr-decay-examples 4000000 "
    "--lr-gamma 0.95 --batch-size 256 --max-frames 300 --loss multi --max-steps 100000 "
    "--eval-every 1000"
)
_ZHAO_LR = (
    "--optimizer adam --lr 0.01 --lr-decay-examples 4000000 --lr-gamma 0.95 --batch-size 256 "
    "--max-frames 300 --loss multi --max-steps 100000 --eval-every 1000"
)
# Akopyan & Khashba: RMSProp (decay 0.9), 90 frames after skipping 20, sigmoid cross entropy.
# The decay factor per period is not given: 0.95, as the YouTube-8M starter code.
_AKOPYAN = (
    "--optimizer rmsprop --rmsprop-decay 0.9 --max-frames 90 --skip-first 20 --loss multi "
    "--eval-every 1000 --lr-gamma 0.95"
)
_AKOPYAN_LSTM = (
    f"{_AKOPYAN} --reduction weighted --dropout 0.4 --lr 2e-4 --lr-decay-examples 10000000"
)
_KARPATHY = "--fc-size 4096 --max-frames 360 --loss single --batch-size 32 --epochs 50"
_NEWMAN = "--loss single --batch-size 32 --max-frames 100 --sampling random-crop --epochs 30"
_ABRAMOVICH = (
    "--num-layers 2 --hidden-size 1024 --optimizer sgd --lr 0.01 --batch-size 50 --epochs 500 "
    "--patience 0 --max-frames 360 --loss single --test-fraction 0.2"
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("zhao-lr", "zhao", _a(f"-m logistic {_ZHAO_LR}")),
        Recipe("zhao-lstm", "zhao", _a(f"-m lstm {_ZHAO}")),
        Recipe("zhao-bilstm", "zhao", _a(f"-m bilstm {_ZHAO}")),
        Recipe("zhao-attention", "zhao", _a(f"-m attention --attention-size 512 {_ZHAO}")),
        Recipe("zhao-bigru-rgb", "zhao", _a(f"-m bigru --streams rgb {_ZHAO}")),
        Recipe("zhao-bigru-audio", "zhao", _a(f"-m bigru --streams audio {_ZHAO}")),
        Recipe("zhao-bigru-concat", "zhao", _a(f"-m bigru --fusion concat {_ZHAO}")),
        Recipe(
            "zhao-bigru-shared", "zhao", _a(f"-m bigru --fusion shared --fusion-dim 512 {_ZHAO}")
        ),
        Recipe(
            "zhao-bigru-projection",
            "zhao",
            _a(f"-m bigru --fusion projection --fusion-dim 512 --fusion-weight 0.1 {_ZHAO}"),
        ),
        Recipe("zhao-ensemble", "zhao", _a("--weights gap"), members=("zhao-lr", "zhao-lstm")),
        Recipe(
            "akopyan-bof",
            "akopyan",
            _a(
                f"-m bof --pooling max --fc-size 4096 --dropout 0.3 {_AKOPYAN} --lr 1e-4 "
                "--lr-decay-examples 20000000 --batch-size 512 --max-steps 60000"
            ),
        ),
        Recipe(
            "akopyan-lstm",
            "akopyan",
            _a(
                f"-m lstm --num-layers 2 --hidden-size 2048 {_AKOPYAN_LSTM} --batch-size 256 "
                "--max-steps 100000"
            ),
        ),
        Recipe(
            "akopyan-lstm-moe",
            "akopyan",
            _a(
                "-m lstm_moe --hidden-size 512 --moe-experts 64 --moe-top-k 4 --expert-size 1024 "
                f"--moe-importance-weight 0.1 --moe-load-weight 0.1 {_AKOPYAN_LSTM} "
                "--batch-size 128 --max-steps 50000"
            ),
        ),
        Recipe(
            "akopyan-lstm-bal",
            "akopyan",
            _a(
                f"-m lstm --num-layers 2 --hidden-size 2048 {_AKOPYAN_LSTM} --batch-size 256 "
                "--max-steps 80000 --pos-weight inverse-frequency"
            ),
            bench=False,  # the seed store is class-balanced: every class would get weight 1
        ),
        Recipe("karpathy-single-frame", "karpathy", _a(f"-m frame {_KARPATHY}")),
        Recipe(
            "karpathy-late-fusion",
            "karpathy",
            _a(f"-m late_fusion --frame-distance 15 --hidden-size 4096 {_KARPATHY}"),
        ),
        Recipe(
            "karpathy-slow-fusion",
            "karpathy",
            _a(f"-m tconv --num-layers 3 --hidden-size 256 {_KARPATHY}"),
        ),
        Recipe(
            "newman-frame",
            "newman",
            _a(f"-m frame --fc-size 1024 --optimizer adam --lr 1e-3 {_NEWMAN} --patience 5"),
        ),
        Recipe(
            "newman-gru",
            "newman",
            _a(f"-m gru --hidden-size 512 --reduction last --optimizer sgd --lr 1e-4 {_NEWMAN}"),
        ),
        Recipe("abramovich-lstm", "abramovich", _a(f"-m lstm {_ABRAMOVICH}")),
        Recipe("abramovich-bilstm", "abramovich", _a(f"-m bilstm {_ABRAMOVICH}")),
    )
}


def train_command(recipe: Recipe) -> list[str]:
    """The full-scale command of a recipe, as docs/recipes.md prints it."""
    if recipe.is_ensemble:
        runs = [f"runs/{m}" for m in recipe.members]
        return ["heads", "ensemble", *runs, "--out", f"runs/{recipe.name}", *recipe.args]
    store = STUDIES[recipe.study].store
    return ["heads", "train", store, "--out", f"runs/{recipe.name}", *recipe.args]


# ------------------------------------------------------------------------------ scale-down

SIZE_DIV = 16  # widths: recurrent units, FC blocks, experts' units, fusion and attention widths
EXPERT_DIV = 8  # sparse MoE experts (64 -> 8); top-k halves (4 -> 2)
BATCH_DIV = 8  # videos per batch (at least 8)
STEP_DIV = 100  # optimizer steps and evaluation intervals
FRAME_DIV = 5  # frame counts: max frames, skipped intro frames, late-fusion distance
STEP_CAP = 1000  # no scaled run takes more optimizer steps than this


def _div(by: int, floor: int = 1) -> Callable[[str], str]:
    return lambda value: str(max(floor, round(float(value) / by)))


SCALE_RULES: dict[str, Callable[[str], str]] = {
    "--hidden-size": _div(SIZE_DIV, 8),
    "--fc-size": _div(SIZE_DIV, 8),
    "--expert-size": _div(SIZE_DIV, 8),
    "--fusion-dim": _div(SIZE_DIV, 8),
    "--attention-size": _div(SIZE_DIV, 8),
    "--moe-experts": _div(EXPERT_DIV, 3),
    "--moe-top-k": _div(2),
    "--batch-size": _div(BATCH_DIV, 8),
    "--max-steps": _div(STEP_DIV),
    "--eval-every": _div(STEP_DIV),
    # The same number of decays per run: steps and batch are both smaller.
    "--lr-decay-examples": _div(STEP_DIV * BATCH_DIV),
    "--max-frames": _div(FRAME_DIV),
    "--skip-first": _div(FRAME_DIV, 0),
    "--frame-distance": _div(FRAME_DIV),
}


def option_pairs(args: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """Options as (name, value) pairs; a flag followed by another option has value None."""
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        name = args[i]
        has_value = i + 1 < len(args) and not args[i + 1].startswith("-")
        pairs.append((name, args[i + 1] if has_value else None))
        i += 2 if has_value else 1
    return pairs


def scaled_args(args: tuple[str, ...], step_cap: int = STEP_CAP) -> list[str]:
    """A recipe's options scaled down by SCALE_RULES, same structure otherwise. A run counted
    in steps stays counted in steps (its epoch limit is lifted); every run stops after at most
    ``step_cap`` steps."""
    pairs = option_pairs(args)
    names = {name for name, _ in pairs}
    out: list[str] = []
    for name, value in pairs:
        if name == "--epochs" and "--max-steps" in names:
            value = "100000"
        elif name == "--max-steps" and value is not None:
            value = str(min(step_cap, int(SCALE_RULES[name](value))))
        elif name in SCALE_RULES and value is not None:
            value = SCALE_RULES[name](value)
        out += [name] if value is None else [name, value]
    if "--max-steps" not in names:
        out += ["--max-steps", str(step_cap)]
    return out


# ------------------------------------------------------------------------------ claims


@dataclass(frozen=True)
class Claim:
    """The study found ``better`` scoring at least as high as ``worse`` on ``metric``; with
    ``limit`` instead, ``better``'s ``metric`` must stay at or under it."""

    study: str
    text: str  # the study's finding, with its figures
    better: str
    worse: str | None = None
    metric: str = "gap_at_20"
    limit: float | None = None
    tolerance: float = 0.0  # ``better`` may trail ``worse`` by this much ("about equal")
    lower_is_better: bool = False  # e.g. best_step: fewer steps to the best evaluation


CLAIMS = (
    Claim(
        "zhao", "concat fusion (GAP 0.840) beats rgb alone", "zhao-bigru-concat", "zhao-bigru-rgb"
    ),
    Claim("zhao", "concat fusion beats audio alone", "zhao-bigru-concat", "zhao-bigru-audio"),
    Claim(
        "zhao",
        "concat (0.840) beats shared space (0.011)",
        "zhao-bigru-concat",
        "zhao-bigru-shared",
    ),
    Claim(
        "zhao",
        "concat (0.840) beats projection (0.017)",
        "zhao-bigru-concat",
        "zhao-bigru-projection",
    ),
    Claim("zhao", "Bi-LSTM (0.806) beats LSTM (0.799)", "zhao-bilstm", "zhao-lstm"),
    Claim("zhao", "attention (0.814) beats Bi-LSTM (0.806)", "zhao-attention", "zhao-bilstm"),
    Claim(
        "zhao",
        "Bi-GRU concat (0.840) beats attention (0.814)",
        "zhao-bigru-concat",
        "zhao-attention",
    ),
    Claim("zhao", "LSTM (0.799) beats LR (0.707)", "zhao-lstm", "zhao-lr"),
    Claim("zhao", "ensemble LR+LSTM (0.819) beats LSTM (0.799)", "zhao-ensemble", "zhao-lstm"),
    Claim("zhao", "ensemble LR+LSTM (0.819) beats LR (0.707)", "zhao-ensemble", "zhao-lr"),
    Claim(
        "akopyan",
        "LSTM_MoE_512 (GAP 0.76) beats BoF_4096 (0.66)",
        "akopyan-lstm-moe",
        "akopyan-bof",
    ),
    Claim(
        "akopyan",
        "Simple_LSTM_2048 (GAP 0.77) beats BoF_4096 (0.66)",
        "akopyan-lstm",
        "akopyan-bof",
    ),
    Claim(
        "akopyan",
        "LSTM_MoE keeps expert load balanced (max/mean load <= 3)",
        "akopyan-lstm-moe",
        metric="moe_max_load_ratio",
        limit=3.0,
    ),
    Claim(
        "karpathy",
        "slow fusion (60.9%) beats single frame (about 60%)",
        "karpathy-slow-fusion",
        "karpathy-single-frame",
        metric="hit_at_1",
    ),
    Claim(
        "karpathy",
        "single frame beats late fusion",
        "karpathy-single-frame",
        "karpathy-late-fusion",
        metric="hit_at_1",
    ),
    Claim(
        "newman",
        "GRU on frozen features (top-1 68.7%) beats the frame-mean classifier (47.0%)",
        "newman-gru",
        "newman-frame",
        metric="hit_at_1",
    ),
    Claim(
        "abramovich",
        "BiLSTM about matches LSTM (hit@1 96.62% vs 96.92%, 5 classes; within 0.02)",
        "abramovich-bilstm",
        "abramovich-lstm",
        metric="hit_at_1",
        tolerance=0.02,
    ),
    Claim(
        "abramovich",
        "BiLSTM converges sooner (100 epochs vs over 200): steps to the best evaluation",
        "abramovich-bilstm",
        "abramovich-lstm",
        metric="best_step",
        lower_is_better=True,
    ),
)
