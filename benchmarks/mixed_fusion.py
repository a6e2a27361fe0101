"""``mixed`` with its fp32 stem's conv + ReLU fused (as it runs) against unfused, alternated.

The fusion changes no feature, so its effect is a few percent of speed, which this VM's run-to-
run spread (the reference alone moves 15-20% between runs) hides when two runs are compared.
Here both modules live in one process and run pass by pass in turn on the same batch of real
frames, so load from elsewhere hits both alike: the ratio of their median (and best) passes is
the measurement. The unfused module is the same converted one with each ``Fp32ConvReLU`` put
back as the ``ConvReLU`` it replaced; the script checks that both give identical features.

    python -m benchmarks.mixed_fusion                 # -> benchmarks/results/mixed_fusion.json
    python -m benchmarks.mixed_fusion --passes 5      # a quick look
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import numpy as np

from benchmarks.common import write_result


def unfused(module: object) -> object:
    """A copy of the converted ``mixed`` module with the stem's convs and ReLUs apart again."""
    from vidfeat.backbones.inception_v3 import ConvReLU
    from vidfeat.backbones.runtimes.mixed import Fp32ConvReLU

    module = copy.deepcopy(module)
    for name, layer in list(module.named_modules()):
        if isinstance(layer, Fp32ConvReLU):
            padding, stride = layer.args[0], layer.args[1]
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, ConvReLU(layer.weight, layer.bias, stride, padding))
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=41, help="passes of each, alternated")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    from vidfeat.allocator import keep_freed_memory

    keep_freed_memory()  # as the vidfeat command does
    import torch

    from benchmarks.backbone import real_frames
    from vidfeat.backbones import create_backbone
    from vidfeat.backbones.runtimes.mixed import Fp32ConvReLU

    backbone = create_backbone("inception_v3", precision="mixed")
    frames = np.resize(real_frames(backbone.spec), (args.batch_size, 299, 299, 3))
    batch = (
        torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    )
    modules = {"fused": backbone.module, "unfused": unfused(backbone.module)}
    fused_layers = sum(isinstance(m, Fp32ConvReLU) for m in modules["fused"].modules())
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {name: [] for name in modules}
    with torch.inference_mode():
        outputs = {name: module(batch) for name, module in modules.items()}  # also warms up
        if not torch.equal(outputs["fused"], outputs["unfused"]):
            raise SystemExit("the fused and unfused modules give different features")
        for _ in range(args.passes):
            for name, module in modules.items():
                started = time.perf_counter()
                module(batch)
                seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    best = {name: min(s) for name, s in seconds.items()}
    result = {
        "fused_layers": fused_layers,
        "identical_features": True,
        "median_pass_s": median,
        "best_pass_s": best,
        "fused_speedup_median": median["unfused"] / median["fused"],
        "fused_speedup_best": best["unfused"] / best["fused"],
        "passes_s": seconds,
    }
    config = vars(args) | {
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    path = write_result("mixed_fusion", {"config": config, "result": result})
    print(
        f"{fused_layers} fused layers; fused faster by x{result['fused_speedup_median']:.3f} "
        f"(median pass), x{result['fused_speedup_best']:.3f} (best); written to {path}"
    )


if __name__ == "__main__":
    main()
