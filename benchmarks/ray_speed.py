#!/usr/bin/env python
"""Images per second: the serial CLI against ``lightsr.ray.upscale_dataset`` with 1 and 2 Ray workers.

One folder of generated photo-like PNGs (``--count`` images of ``--size`` pixels, a few sizes so that
the mix is realistic) is upscaled, end to end (read, upscale, write), into a fresh folder by each of:

* ``cli``: ``lightsr upscale SRC -o OUT`` in a subprocess (model load included, as a user runs it);
* ``ray N``: ``upscale_dataset(SRC, OUT, concurrency=N, num_cpus=1)`` on a local Ray already started
  (``ray.init`` is not timed; actor start-up and the model load in each actor are).

Each is run ``--rounds`` times, interleaved, and the median is reported, with images/s and the speed-up
over the CLI. Every worker gets one torch thread (Ray gives an actor as many threads as ``num_cpus``);
the CLI gets torch's default (all cores), as it would, and
one thread (``OMP_NUM_THREADS=1``) in a second row, to tell threading apart from the rest.
Prints a markdown table (for docs/ray.md).

Usage (from the repository root)::

    python benchmarks/ray_speed.py                         # imdn-rtc x2, 48 images around 256 px
    python benchmarks/ray_speed.py --model rfdn --scale 4 --weights ../shared/weights/RFDN_AIM_x4.pth
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LIGHTSR_SHARED", ROOT.parent / "shared"))


def make_images(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        h, w = size + 16 * (i % 3), size - 16 * (i % 2)  # a few sizes, as a real folder has
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / 5.0 + i)], axis=-1)
        img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i:04d}.png")


def run_cli(src: Path, out: Path, model_args: list[str], threads: int | None = None) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "lightsr", "upscale", str(src), "-o", str(out), "--quiet", *model_args],
        check=True,
        env=env,
    )
    return time.perf_counter() - t0


def run_ray(src: Path, out: Path, workers: int, opts: dict) -> float:
    import lightsr.ray

    t0 = time.perf_counter()
    summary = lightsr.ray.upscale_dataset(src, out, concurrency=workers, num_cpus=1, progress=False, **opts)
    seconds = time.perf_counter() - t0
    assert summary["failed"] == 0 and summary["skipped"] == 0, summary
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imdn-rtc")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--weights", default=str(SHARED / "weights" / "IMDN_x2_RTC.pth"))
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="files per Ray task")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    opts = {"model": args.model, "scale": args.scale, "weights": args.weights, "batch_size": args.batch_size}
    model_args = ["--model", args.model, "--scale", str(args.scale), "--weights", args.weights]
    variants = {
        "serial CLI": lambda s, o: run_cli(s, o, model_args),
        "serial CLI, 1 thread": lambda s, o: run_cli(s, o, model_args, threads=1),
        "Ray, 1 worker": lambda s, o: run_ray(s, o, 1, opts),
        "Ray, 2 workers": lambda s, o: run_ray(s, o, 2, opts),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_images(src, args.count, args.size)
        for _ in range(args.rounds):
            for name, fn in variants.items():
                out = Path(tmp) / "out"
                shutil.rmtree(out, ignore_errors=True)
                times[name].append(fn(src, out))
    ray.shutdown()

    cli = statistics.median(times["serial CLI"])
    print(
        f"{args.count} PNGs of about {args.size}x{args.size}, {args.model} x{args.scale}, {os.cpu_count()} "
        f"cores ({platform.processor() or platform.machine()}), median of {args.rounds} rounds\n"
    )
    print("| run | seconds | images/s | vs CLI |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {t:.1f} | {args.count / t:.1f} | {cli / t:.2f}x |")


if __name__ == "__main__":
    main()
