"""Object-store requests and read passes: a Zarr store on moto's S3 server on 127.0.0.1.

Counts the HTTP requests the server answers while a store is created, written, opened and read
(moto logs one line per request), and times reading every video three times through one reader
with the default chunk cache against a reader with none (``cache_mb=0``: every read fetches its
chunks again), alternating the two. Local requests take a few milliseconds; on a real object
store each costs tens, so the request counts are the figures that carry over.

``python -m benchmarks.objstore`` (needs the dev extras: moto's server and s3fs).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_result

BUCKET = "vidfeat-bench"
REQUEST_LINE = re.compile(r'HTTP/1\.[01]" \d{3} ')


def _serve(log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto's server did not start")


def _requests(log: Path) -> int:
    """Requests answered so far: moto (werkzeug) logs each as '... "GET /key HTTP/1.1" 200 -'."""
    return len(REQUEST_LINE.findall(log.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    log = Path(tempfile.mkdtemp(prefix="vidfeat-moto-")) / "requests.log"
    server, endpoint = _serve(log)
    try:
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        import boto3

        from vidfeat import create_store, open_store

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        path = f"s3://{BUCKET}/bench.zarr"
        rng = np.random.default_rng(0)
        lengths = rng.integers(30, 200, size=args.videos)
        counts, times = {}, {}
        before = _requests(log)
        start = time.perf_counter()
        writer = create_store(path, dim=args.dim, commit_every=50)
        times["create_store_s"] = time.perf_counter() - start
        counts["create_store"] = _requests(log) - before
        features = [rng.standard_normal((int(n), args.dim)).astype(np.float32) for n in lengths]
        before, start = _requests(log), time.perf_counter()
        with writer:
            for i, x in enumerate(features):
                writer.write(f"v{i}", x)
        times[f"write_{args.videos}_videos_s"] = time.perf_counter() - start
        counts[f"write_{args.videos}_videos"] = _requests(log) - before
        before = _requests(log)
        start = time.perf_counter()
        cached, uncached = open_store(path), open_store(path, cache_mb=0)
        times["open_store_s"] = (time.perf_counter() - start) / 2
        counts["open_store"] = (_requests(log) - before) // 2
        passes: dict[str, list[float]] = {"cached": [], "uncached": []}
        requests: dict[str, list[int]] = {"cached": [], "uncached": []}
        with cached, uncached:
            for _ in range(args.passes):
                for name, reader in (("cached", cached), ("uncached", uncached)):
                    before, start = _requests(log), time.perf_counter()
                    for i in range(args.videos):
                        reader.read(f"v{i}")
                    passes[name].append(time.perf_counter() - start)
                    requests[name].append(_requests(log) - before)
    finally:
        server.terminate()
        server.wait(timeout=30)
    config = vars(args) | {"frames": int(lengths.sum()), "load_average": os.getloadavg()}
    payload = {"config": config, "requests": counts, "times": times}
    payload["read_passes"] = {"seconds": passes, "requests": requests}
    print(write_result("objstore", payload))
    print("| reader | pass | s | requests |")
    print("|---|---:|---:|---:|")
    for name in passes:
        for k, (s, r) in enumerate(zip(passes[name], requests[name], strict=True)):
            print(f"| {name} | {k + 1} | {s:.2f} | {r} |")
    print(counts, {k: round(v, 2) for k, v in times.items()})


if __name__ == "__main__":
    main()
