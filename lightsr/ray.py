"""Upscale datasets on a Ray cluster (``pip install "lightsr[ray]"``): Ray is the engine, lightsr the step.

Two pieces, for the two ways people run batch inference on Ray Data:

* :class:`Upscale`, a callable class for ``Dataset.map_batches(Upscale, fn_constructor_kwargs=...,
  concurrency=N, batch_size=B)``: one :class:`lightsr.Upscaler` per actor, images in and out as Ray's
  numpy batches (``read_images`` columns, mixed sizes, uint8 or uint16, grey/RGB/RGBA).
* :func:`upscale_dataset`, one call from folders or globs to a folder of outputs, with the CLI's naming and
  safe-write rules and the CLI's ``--json`` summary.

Decisions (docs/ray.md says more):

* ``upscale_dataset`` plans on the driver with the CLI's own helpers (``lightsr._batch``: which files, which
  output names, collisions, outputs never inputs, skip existing) and hands Ray a dataset of *paths*; the
  workers read each file with lightsr's readers. Ray's ``read_images`` would decode through Pillow to 8-bit
  arrays: 16-bit colour loses 8 bits, EXIF orientation is not applied, EXIF and ICC profiles are dropped, and
  the CLI's naming needs every path on the driver first anyway. Skipping existing outputs there also means a
  re-run reads no image at all.
* Weights are resolved (downloaded, sha256-verified) once on the driver and travel to the workers through
  Ray's object store as bytes (one ``ray.put``; the zoo's files are 0.1-5 MB). A path would only work where
  every node mounts the driver's cache; bytes work on any cluster, and workers need no Hub access.
* Outputs are written through the CLI's temporary-file-then-rename, so a worker killed mid-file leaves no
  partial file. Ray Data restarts a dead actor and reruns its batch; the rerun does not write again any
  output that appeared (or was replaced) after planning, since that was the first attempt, and counts it as
  written: each output is written exactly once.
* On CPUs images are upscaled one network call each, as the CLI does: batching same-size images there only
  pays for thumbnails, and oneDNN's batched kernels round those differently in the last bit. On GPUs
  (``batch_same_size=None``) same-size images go through the network together.

Example:
    >>> import numpy as np, ray, lightsr.ray
    >>> _ = ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # doctest: +SKIP
    >>> ds = ray.data.from_items([{"image": np.zeros((8, 8, 3), np.uint8)}])
    >>> ds = ds.map_batches(lightsr.ray.Upscale, compute=ray.data.ActorPoolStrategy(size=1), batch_size=4,
    ...     fn_constructor_kwargs={"model": "imdn-rtc", "scale": 2,
    ...                            "weights": "../shared/weights/IMDN_x2_RTC.pth"})
    >>> ds.take(1)[0]["size_out"].tolist()
    [16, 16]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageColor

import lightsr
from lightsr import _batch
from lightsr.errors import InputError, OutputError

try:
    import ray
    import ray.data
except ImportError as exc:  # an optional extra: say how to get it, not a bare ModuleNotFoundError
    raise ImportError("lightsr.ray needs Ray Data: pip install 'lightsr[ray]'") from exc

__all__ = ["Upscale", "upscale_dataset"]

# Test hook (tests/test_ray.py): a path; the first worker to delete that file, right after writing an
# output in the middle of a batch, dies at once (os._exit), as a killed or preempted node would.
_KILL_ONCE_ENV = "LIGHTSR_RAY_TEST_KILL_ONCE"


# --------------------------------------------------------------------------------------------- weights
def _weights_file(weights: Any) -> str | None:
    """A local path for ``load_model``: paths as given; bytes (or an object ref to them) written once per
    node into the temporary folder, named by their sha256, so the actors of one node share one file."""
    if weights is None or isinstance(weights, (str, os.PathLike)):
        return None if weights is None else os.fspath(weights)
    if isinstance(weights, ray.ObjectRef):
        weights = ray.get(weights)
    if not isinstance(weights, (bytes, bytearray, memoryview)):
        raise InputError(
            f"weights must be a file path, the file's bytes or a Ray object ref to them, not "
            f"{type(weights).__name__}; e.g. weights=ray.put(Path('model.safetensors').read_bytes())"
        )
    data = bytes(weights)
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(tempfile.gettempdir()) / "lightsr-ray-weights"
    path = folder / f"{digest}.weights"
    with contextlib.suppress(OSError):
        if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            return str(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{digest[:16]}.", suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)  # concurrent actors of one node each write whole files: the last rename wins
    except OSError as exc:
        raise OutputError(
            f"cannot store the weights in {str(folder)!r} on this worker: {exc.strerror or exc}; set TMPDIR "
            "to a writable folder on the workers (runtime_env={'env_vars': {'TMPDIR': ...}})"
        ) from exc
    return str(path)


def _groups(upscaler: lightsr.Upscaler, batch_same_size: bool | None) -> bool:
    return upscaler.device.type != "cpu" if batch_same_size is None else bool(batch_same_size)


def _column(values: list[Any]) -> np.ndarray:
    """A numpy column Ray takes for images of mixed shapes: stacked when all agree, else an object array."""
    if values and all(isinstance(v, np.ndarray) and v.shape == values[0].shape for v in values):
        return np.stack(values)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


# --------------------------------------------------------------------------------------------- arrays
class Upscale:
    """A callable class for ``ray.data.Dataset.map_batches``: upscales the image column of each batch.

    Constructor keywords (``fn_constructor_kwargs``) load one :class:`lightsr.Upscaler` per Ray actor, as
    :func:`lightsr.load_model` does: ``model``, ``scale``, ``weights`` (a path on every node, the file's
    bytes, or ``ray.put`` of them), ``device``, ``precision``, ``variant``; ``tile_size``, ``tile_pad`` and
    ``max_pixels`` go to every :meth:`~lightsr.Upscaler.upscale` call. ``column`` names the image column
    (``"image"``, as ``ray.data.read_images`` makes it).

    Each batch is Ray's numpy format: ``batch[column]`` holds ``HxW`` / ``HxWxC`` arrays (C = 1..4, uint8,
    uint16 or float in 0..1), stacked or, for mixed sizes, an object array; other columns (``path`` ...) pass
    through. The result has the same columns, the image column upscaled (same dtype and channels), plus
    ``size_in`` and ``size_out`` (``[width, height]``, as in the CLI's ``--json``). ``batch_same_size``:
    send same-size images of a batch through the network together (default: on GPUs only; on CPUs it pays
    for thumbnails only and changes last bits against one-at-a-time runs). A bad image raises and fails
    the batch, as any map_batches error does.

    Example:
        >>> import numpy as np, lightsr.ray
        >>> step = lightsr.ray.Upscale(model="imdn-rtc", scale=2, weights="../shared/weights/IMDN_x2_RTC.pth")
        >>> out = step({"image": np.zeros((2, 8, 6, 3), np.uint8), "path": np.array(["a.png", "b.png"])})
        >>> out["image"].shape, out["size_out"].tolist(), out["path"].tolist()
        ((2, 16, 12, 3), [[12, 16], [12, 16]], ['a.png', 'b.png'])
    """

    def __init__(
        self,
        model: str | None = None,
        scale: int | None = None,
        *,
        weights: str | os.PathLike[str] | bytes | Any = None,
        device: str = "auto",
        precision: str = "auto",
        variant: str | None = None,
        tile_size: int | str | None = "auto",
        tile_pad: int | None = None,
        max_pixels: int | None = None,
        batch_same_size: bool | None = None,
        column: str = "image",
    ) -> None:
        self.upscaler = lightsr.load_model(
            model, scale, weights=_weights_file(weights), device=device, precision=precision, variant=variant
        )
        self.column = column
        self.batch_same_size = _groups(self.upscaler, batch_same_size)
        self._kw: dict[str, Any] = {"tile_size": tile_size, "max_pixels": max_pixels}
        if tile_pad is not None:
            self._kw["tile_pad"] = tile_pad

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Upscale ``batch[column]``: returned with it replaced, and ``size_in``, ``size_out`` added."""
        if hasattr(batch, "to_dict") and not isinstance(batch, dict):  # pandas batch_format
            batch = {k: batch[k].to_numpy() for k in batch.columns}
        if self.column not in batch:
            raise InputError(
                f"the batch has no {self.column!r} column (columns: {sorted(batch)}); pass "
                "fn_constructor_kwargs={'column': NAME} naming the column of images"
            )
        images = list(batch[self.column])
        if self.batch_same_size:
            outs = self.upscaler.upscale(images, **self._kw) if images else []
        else:
            outs = [self.upscaler.upscale(a, **self._kw) for a in images]
        result = dict(batch)
        result[self.column] = _column(outs)
        result["size_in"] = np.array([[a.shape[1], a.shape[0]] for a in images], dtype=np.int64).reshape(
            -1, 2
        )
        result["size_out"] = np.array([[o.shape[1], o.shape[0]] for o in outs], dtype=np.int64).reshape(-1, 2)
        return result


# --------------------------------------------------------------------------------------------- files
def _signature(path: str) -> str:
    """What identifies the file now at ``path`` ("" for none): a changed one was replaced since."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ""
    return f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def _die_if_chosen(dst: str) -> None:
    marker = os.environ.get(_KILL_ONCE_ENV)
    if not marker:
        return
    try:
        os.unlink(marker)  # exactly one process succeeds
    except FileNotFoundError:
        return
    Path(marker + ".victim").write_text(json.dumps({"output": dst, "signature": _signature(dst)}))
    os._exit(1)


class _Replay:
    """Stands in for the Upscaler in the CLI's per-image step (``lightsr._batch.upscale_one``), so that
    reading, checks and writing stay exactly the CLI's: first to capture what it would upscale (for one
    batched network run), then to hand it that image's result."""

    def __init__(self, scale: int, result: Any = None) -> None:
        self.scale = scale
        self.result = result
        self.captured: Any = None

    def upscale(self, image: Any, **kw: Any) -> Any:
        if self.result is None:
            self.captured = image
            raise _CAPTURED
        return self.result


_CAPTURED = RuntimeError("lightsr.ray: image captured for a batched run")  # compared by identity


class _WriteFiles:
    """The Ray actor behind :func:`upscale_dataset`: rows of planned jobs in, one JSON entry per row out."""

    def __init__(
        self,
        model: str,
        scale: int,
        weights: Any,
        device: str,
        precision: str,
        tile_size: int | str | None,
        max_pixels: int | str | None,
        background: str,
        batch_same_size: bool | None,
    ) -> None:
        self.upscaler = lightsr.load_model(
            model, scale, weights=_weights_file(weights), device=device, precision=precision
        )
        self.batch_same_size = _groups(self.upscaler, batch_same_size)
        self.args = argparse.Namespace(tile=tile_size, max_pixels=max_pixels)
        self.pixels_kw, self.limit = _batch.pixel_limit(self.args)  # the CLI's rule, in this worker too
        self.out = _batch.Output(
            ImageColor.getrgb(background)[:3],
            background,
            note=lambda text: print(f"lightsr upscale: {text}", file=sys.stderr),  # type: ignore[arg-type]
        )

    def _one(self, job: Any, entry: dict[str, Any], upscaler: Any) -> None:
        _batch.upscale_one(
            job, upscaler, entry, self.args, self.pixels_kw, self.limit, self.out, lambda d, t: None
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = ("index", "input", "output", "src", "dst", "planned")
        rows = [{k: str(batch[k][i]) for k in keys} for i in range(len(batch["index"]))]
        entries: list[dict[str, Any]] = []
        pending: list[tuple[int, Any, float]] = []  # captured, waiting for one batched network run
        for n, row in enumerate(rows):
            entry = _batch.record(row["input"], row["output"])
            entries.append(entry)
            t0 = time.perf_counter()
            job = _batch.Job(Path(row["src"]), Path(row["dst"]))
            try:
                if job.dst.is_dir():
                    raise OutputError(f"the output path {row['output']!r} is a folder")
                if _signature(row["dst"]) != row["planned"]:
                    # Written (or replaced) after planning: by the first attempt of this batch, which Ray
                    # reran after its worker died. Complete (temp + rename), so it is not written again.
                    with Image.open(job.dst) as im:
                        w, h = im.size
                    s = self.upscaler.scale
                    entry.update(status="written", size_in=[w // s, h // s], size_out=[w, h])
                elif self.batch_same_size:
                    replay = _Replay(self.upscaler.scale)
                    try:
                        self._one(job, entry, replay)
                    except RuntimeError as exc:
                        if exc is not _CAPTURED:
                            raise
                    pending.append((n, replay.captured, t0))
                    continue
                else:
                    self._one(job, entry, self.upscaler)
                    entry["status"] = "written"
            except Exception as exc:  # noqa: BLE001 - one bad image never ends the batch
                entry.update(status="failed", error=_batch.cli_message(exc))
            entry["seconds"] = round(time.perf_counter() - t0, 4)
            if entry["status"] == "written" and n < len(rows) - 1:
                _die_if_chosen(row["dst"])
        if pending:
            self._batched(rows, entries, pending)
        return {
            "index": np.asarray(batch["index"]),
            "entry": np.array([json.dumps(e) for e in entries], dtype=object),
            "device": np.array([str(self.upscaler.device)] * len(entries), dtype=object),
            "precision": np.array([self.upscaler.precision] * len(entries), dtype=object),
        }

    def _batched(self, rows: list[dict[str, str]], entries: list[dict[str, Any]], pending: list[Any]) -> None:
        """One network run for the captured images (the engine batches equal sizes), then the CLI's writes.
        16-bit colour files are decoded a second time there: Pillow cannot hold them, so the CLI reads them
        itself and the captured array is not kept."""
        kw = {"tile_size": self.args.tile, **self.pixels_kw}
        results: list[Any] = []
        if len(pending) > 1:
            with contextlib.suppress(Exception):  # one bad image: run them one by one, to blame only it
                results = list(self.upscaler.upscale([image for _, image, _ in pending], **kw))
        for k, (n, image, t0) in enumerate(pending):
            entry = entries[n]
            job = _batch.Job(Path(rows[n]["src"]), Path(rows[n]["dst"]))
            try:
                result = results[k] if results else self.upscaler.upscale(image, **kw)
                self._one(job, entry, _Replay(self.upscaler.scale, result))
                entry["status"] = "written"
            except Exception as exc:  # noqa: BLE001 - one bad image never ends the batch
                entry.update(status="failed", error=_batch.cli_message(exc))
            entry["seconds"] = round(time.perf_counter() - t0, 4)
            if entry["status"] == "written" and n < len(rows) - 1:
                _die_if_chosen(rows[n]["dst"])


# --------------------------------------------------------------------------------------------- driver
def _resolve_model(
    model: str | None, scale: int | None, weights: str | os.PathLike[str] | None
) -> tuple[lightsr.Upscaler, Path]:
    """The model the options name, loaded once here on the CPU (a wrong name or file fails before Ray
    starts any work, with the CLI's rules for a missing scale), and its verified weights file."""
    ns = argparse.Namespace(
        model=model,
        scale=scale,
        weights=None if weights is None else os.fspath(weights),
        device="cpu",
        precision="fp32",
    )
    up = _batch.load_upscaler(ns)
    if weights is not None:
        return up, Path(weights)
    # Cached by the load above, verified against the manifest's sha256 again here.
    return up, lightsr.download_weights(up.name, scale=up.scale)[0]


def _per_actor_fit(num_cpus: float, num_gpus: float) -> int:
    res = ray.cluster_resources()
    fits = [int(res.get("CPU", 1) // num_cpus)] if num_cpus else []
    if num_gpus:
        fits.append(int(res.get("GPU", 0) // num_gpus))
    return max(1, min(fits) if fits else 1)


def upscale_dataset(
    src: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    dst: str | os.PathLike[str] | None,
    *,
    model: str | None = None,
    scale: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile_size: int | str | None = "auto",
    max_pixels: int | str | None = None,
    format: str = "auto",
    background: str = "white",
    overwrite: bool = False,
    recursive: bool = False,
    concurrency: int | tuple[int, int] | None = None,
    batch_size: int = 16,
    num_cpus: float = 1,
    num_gpus: float = 0,
    batch_same_size: bool | None = None,
    address: str | None = None,
    progress: bool = True,
    **map_batches_kwargs: Any,
) -> dict[str, Any]:
    """Upscale image files, folders or globs into the folder ``dst`` on Ray; returns the CLI's JSON summary.

    ``src`` and ``dst`` are the CLI's ``INPUT...`` and ``-o`` (``None``: ``NAME_xS`` files beside the inputs),
    and the other options its flags (``tile_size`` is ``--tile``; ``max_pixels``: ``None`` lightsr's limit,
    ``'none'`` no limit). Same rules: files found in folders and by globs keep their relative paths, names
    never collide, outputs are never inputs, existing outputs are skipped (``overwrite=True`` replaces
    them), each output appears whole or not at all. Paths must mean the same files on every node (a shared
    filesystem). The summary is the dict ``lightsr upscale --json`` prints: ``model``, ``scale``,
    ``precision``, ``device``, ``images`` (one entry per input: ``input``, ``output``, ``status`` written /
    skipped / failed, ``error``, ``size_in``, ``size_out``, ``seconds``), ``written``, ``skipped``,
    ``failed``, ``interrupted``, ``error``.

    Ray: the job joins the running Ray (``ray.init`` done by the caller), else starts one with ``address``
    (``None``: ``RAY_ADDRESS`` or a local Ray, shut down afterwards). ``concurrency`` actors (default: from 1
    up to as many as the cluster fits, Ray scales the pool) each hold one model, use ``num_cpus`` CPU
    threads and ``num_gpus`` GPUs, and take ``batch_size`` files per task: a worker that dies costs only its
    batch, which Ray reruns. Further keywords go to ``map_batches`` (``resources``, ``runtime_env``...).
    Raises :class:`~lightsr.errors.InputError` for what the CLI calls usage errors (nothing is written then).
    Ctrl-C stops the job and returns the summary so far, ``interrupted`` True (unfinished images are
    ``"interrupted"``; finished ones are complete files).

    Example:
        >>> import tempfile, numpy as np, lightsr.ray
        >>> from PIL import Image
        >>> src, out = tempfile.mkdtemp(), tempfile.mkdtemp()
        >>> Image.fromarray(np.zeros((8, 6, 3), np.uint8)).save(f"{src}/a.png")
        >>> summary = lightsr.ray.upscale_dataset(src, out, model="imdn-rtc", scale=2, progress=False,
        ...     weights="../shared/weights/IMDN_x2_RTC.pth", concurrency=1)
        >>> summary["written"], summary["images"][0]["size_out"]
        (1, [12, 16])
    """
    inputs = [os.fspath(s) for s in ([src] if isinstance(src, (str, os.PathLike)) else src)]
    out_dir = Path(dst) if dst is not None else None
    if tile_size not in ("auto", None) and (not isinstance(tile_size, int) or tile_size < _batch.MIN_TILE):
        raise InputError(
            f"tile_size must be 'auto', None or an int of at least {_batch.MIN_TILE}, not {tile_size!r}"
        )
    if format not in ("auto", "same", *_batch.FORMAT_EXT):
        raise InputError(f"format must be one of auto, same, {', '.join(_batch.FORMAT_EXT)}; not {format!r}")
    try:
        ImageColor.getrgb(background)
    except ValueError as exc:
        raise InputError(f"background takes a colour name or #rrggbb, not {background!r}") from exc
    try:
        _batch.check_inputs(inputs, out_dir)
        up, weights_path = _resolve_model(model, scale, weights)
        found, problems = _batch.expand_inputs(inputs, recursive, out_dir, up.scale)
        if not found and not problems:
            raise _batch.UsageError(
                "no image files found in the inputs (nothing but earlier outputs, or no images)"
            )
        jobs = _batch.plan(found, out_dir, up.scale, format)
    except _batch.UsageError as exc:  # the CLI's usage errors, as the API's error (the cause says which)
        raise InputError(str(exc)) from exc
    _batch.remove_stale_partials({j.dst.parent for j in jobs})

    entries, todo = _batch.refused(problems, jobs)
    rows: list[dict[str, Any]] = []
    for job in todo:
        entry = _batch.record(job.src, job.dst)
        entries.append(entry)
        planned = _signature(str(job.dst))
        if planned and not overwrite and not job.dst.is_dir():
            entry.update(status="skipped", seconds=0.0)  # decided here: a re-run reads no image
            continue
        rows.append(
            {
                "index": len(entries) - 1,
                "input": entry["input"],
                "output": entry["output"],
                "src": os.path.abspath(job.src),
                "dst": os.path.abspath(job.dst),
                "planned": planned,
            }
        )

    # precision and device: as the first worker reports them
    about: dict[str, Any] = {
        "model": up.name,
        "scale": up.scale,
        "precision": None,
        "device": None,
        "backend": up.backend,
    }
    started_ray = interrupted = False
    try:
        if rows:
            if not ray.is_initialized():
                ray.init(address=address, include_dashboard=False, log_to_driver=progress)
                started_ray = True
            _run(
                rows,
                entries,
                about,
                up,
                weights_path,
                device=device,
                precision=precision,
                tile_size=tile_size,
                max_pixels=max_pixels,
                background=background,
                batch_same_size=batch_same_size,
                concurrency=concurrency,
                batch_size=batch_size,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                progress=progress,
                map_batches_kwargs=map_batches_kwargs,
            )
    except KeyboardInterrupt:  # Ctrl-C: the summary so far (finished images are complete files)
        interrupted = True
    finally:
        if started_ray:
            ray.shutdown()
    return _batch.summary(about, entries, interrupted, None)


def _run(
    rows: list[dict[str, Any]],
    entries: list[dict[str, Any]],
    about: dict[str, Any],
    up: lightsr.Upscaler,
    weights_path: Path,
    *,
    device: str,
    precision: str,
    tile_size: Any,
    max_pixels: Any,
    background: str,
    batch_same_size: bool | None,
    concurrency: Any,
    batch_size: int,
    num_cpus: float,
    num_gpus: float,
    progress: bool,
    map_batches_kwargs: dict[str, Any],
) -> None:
    """The Ray Data job: rows of planned jobs -> actors that read, upscale and write -> entries by index."""
    from tqdm.auto import tqdm

    ref = ray.put(weights_path.read_bytes())  # once into the object store: every node fetches it once
    if concurrency is None:
        concurrency = (1, _per_actor_fit(num_cpus, num_gpus))
    low, high = (concurrency, concurrency) if isinstance(concurrency, int) else concurrency
    # Ray Data's actor pools restart a dead actor and rerun its batch (max_restarts / max_task_retries
    # default to -1 there); the driver holds ``ref`` until the job ends, so a restarted actor finds it.
    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, progress
    ds = ray.data.from_items(rows).map_batches(
        _WriteFiles,
        fn_constructor_kwargs={
            "model": up.name,
            "scale": up.scale,
            "weights": ref,
            "device": device,
            "precision": precision,
            "tile_size": tile_size,
            "max_pixels": max_pixels,
            "background": background,
            "batch_same_size": batch_same_size,
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
        **map_batches_kwargs,
    )
    try:
        with tqdm(total=len(rows), unit="img", disable=not progress, file=sys.stderr) as bar:
            for row in ds.iter_rows():
                entries[int(row["index"])] = json.loads(row["entry"])
                about["device"] = about["device"] or str(row["device"])
                about["precision"] = about["precision"] or str(row["precision"])
                bar.update(1)
    finally:
        ctx.enable_progress_bars = bars
