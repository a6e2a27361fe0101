"""The plain loop users write first: the baseline `vidfeat extract` is compared against.

For each video, one at a time: read the 1-fps frames with the decoder, apply torchvision's
InceptionV3 transforms on tensors, and run InceptionV3 in fp32, NCHW, in batches of frames
from that video only. Nothing overlaps: decoding and inference take turns.

- ``decord``: ``VideoReader.get_batch`` of the frame indices nearest to k seconds.
- ``pyav``: decode every frame in order and keep the first one at or after k seconds
  (``frame.time``), converted to RGB only when kept.

Transforms: ``torchvision.models.Inception_V3_Weights.DEFAULT.transforms()`` (resize the short
side to 342 with antialiasing, centre-crop 299, scale to [0, 1], ImageNet mean/std) applied to a
uint8 NCHW batch. Building the preset reads no weights.

Model: torchvision's ``inception_v3`` (``aux_logits=False``, ``transform_input=True`` as with its
pretrained weights, ``fc`` replaced by ``Identity`` so it returns the 2048-d pool features),
built with ``weights=None, init_weights=False``. It is torchvision's model rather than our
port because it is what such a loop loads (``inception_v3(weights=DEFAULT)``): same layers and
nearly the same FLOPs as our port, but with batch norm as separate, unfolded layers in plain
NCHW. Its weights are PyTorch's default initialisation, not ImageNet's: they cannot be
downloaded here, and inference time does not depend on their values. ``init_weights=False``
only skips torchvision's slower truncated-normal initialisation at start-up.

    python -m benchmarks.baseline --decoder decord clip1.mp4 clip2.mp4

prints one JSON line: frames, seconds of the loop, seconds of set-up (imports, model).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator

import numpy as np


def decord_frames(path: str, fps: float, max_frames: int) -> np.ndarray:
    """(T, H, W, 3) uint8: one ``get_batch`` of the indices nearest to k / fps seconds."""
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    native = reader.get_avg_fps()
    n = len(reader)
    count = min(max_frames, math.ceil(n / native * fps - 1e-9))
    indices = [min(n - 1, round(k * native / fps)) for k in range(count)]
    return reader.get_batch(indices).asnumpy()


def pyav_frames(path: str, fps: float, max_frames: int) -> np.ndarray:
    """(T, H, W, 3) uint8: the first decoded frame at or after each k / fps seconds."""
    import av

    kept, next_t, start = [], 0.0, None
    with av.open(path) as container:
        for frame in container.decode(video=0):
            t = frame.time or 0.0
            start = t if start is None else start
            if t - start + 1e-6 >= next_t:
                kept.append(frame.to_ndarray(format="rgb24"))
                next_t = len(kept) / fps
                if len(kept) == max_frames:
                    break
    return np.stack(kept)


READERS: dict[str, Callable[[str, float, int], np.ndarray]] = {
    "decord": decord_frames,
    "pyav": pyav_frames,
}


def build_model(device: str):
    """torchvision InceptionV3 to its 2048-d pool features, fp32, eval mode (see above)."""
    import torch
    from torchvision import models

    model = models.inception_v3(
        weights=None, aux_logits=False, init_weights=False, transform_input=True
    )
    model.fc = torch.nn.Identity()
    return model.eval().to(device)


def batches(frames: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(frames), batch_size):
        yield frames[i : i + batch_size]


def run(
    paths: list[str],
    decoder: str,
    batch_size: int = 32,
    fps: float = 1.0,
    max_frames: int = 360,
    device: str = "cpu",
) -> dict:
    """The loop over ``paths``; returns frames and seconds (set-up apart)."""
    t0 = time.perf_counter()
    import torch
    from torchvision.models import Inception_V3_Weights

    transforms = Inception_V3_Weights.DEFAULT.transforms()
    model = build_model(device)
    read = READERS[decoder]
    t1 = time.perf_counter()
    frames_done = 0
    with torch.inference_mode():
        for path in paths:
            frames = read(path, fps, max_frames)
            for batch in batches(frames, batch_size):
                x = transforms(torch.from_numpy(batch).permute(0, 3, 1, 2)).to(device)
                feats = model(x).cpu().numpy()
                frames_done += len(feats)
    return {
        "decoder": decoder,
        "frames": frames_done,
        "setup_s": t1 - t0,
        "loop_s": time.perf_counter() - t1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--decoder", choices=sorted(READERS), default="decord")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--max-frames", type=int, default=360)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = run(args.paths, args.decoder, args.batch_size, args.fps, args.max_frames, args.device)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
