"""The only importer of huggingface_hub: find, download, verify and cache weights.

Where ``load_model(name, scale)`` gets its weights when no ``weights=`` path is given:

1. **The Hugging Face Hub**, for records whose license allows re-hosting and that the maintainer has
   published (``hub.revision`` set in the manifest): ``hf_hub_download(repo_id, filename, revision=<commit>)``
   into the Hugging Face cache, honouring ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE``
   and tokens exactly as huggingface_hub does. The file's sha256 is checked against the manifest on every
   load; a bad file is deleted from the cache and :class:`~lightsr.errors.WeightsIntegrityError` raised.
2. **The upstream checkpoint**, when the record is never re-hosted (no license), not yet published (today:
   every record), or the Hub has no such repo/file: the pinned URL (base overridable with
   ``LIGHTSR_UPSTREAM_ENDPOINT``) is downloaded, never past the size the manifest pins, its sha256 checked,
   read with ``torch.load(weights_only=True)``, converted, and the converted safetensors file kept in
   lightsr's cache (``LIGHTSR_CACHE``, default ``~/.cache/lightsr``). A cached file is checked on every load
   against the sha256 the manifest pins for it, not only against the note written beside it.
3. **Offline** (``HF_HUB_OFFLINE=1``), only what is cached is used; otherwise a
   :class:`~lightsr.errors.WeightsNotFoundError` says which file is missing and how to get it. With the
   variable unset and no network, a short connection check makes each file fail at once with one
   :class:`~lightsr.errors.DownloadError` line (a host found unreachable is not retried for a minute).

huggingface_hub reads its environment variables once, at import; lightsr reads them at each call and
passes them on explicitly (``HF_HUB_OFFLINE`` included), so a variable set or changed after
``import lightsr`` (or in a test) is honoured.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightsr._version import __version__
from lightsr._weights import FORMAT_VERSION, atomic_write_bytes, convert_file, sha256_file
from lightsr._zoo import ModelDescriptor
from lightsr.errors import DownloadError, WeightsIntegrityError, WeightsNotFoundError

logger = logging.getLogger("lightsr")

GITHUB = "https://github.com"
UPSTREAM_ENV = "LIGHTSR_UPSTREAM_ENDPOINT"
CACHE_ENV = "LIGHTSR_CACHE"


# ------------------------------------------------------------------------------------------ environment
def offline_mode() -> bool:
    """Whether Hub (and upstream) downloads are switched off, from the environment as it is *now*.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import, into ``huggingface_hub.constants``; lightsr
    reads it (or ``TRANSFORMERS_OFFLINE``) at each call, the way huggingface_hub parses it, and hands the
    answer on (:func:`_sync_hf_offline`), so switching it after import works both ways.
    """
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _sync_hf_offline(offline: bool) -> None:
    """Make huggingface_hub agree with :func:`offline_mode` for the calls lightsr is about to make."""
    from huggingface_hub import constants

    # huggingface_hub consults this module attribute at every request (is_offline_mode()).
    constants.HF_HUB_OFFLINE = offline


# ------------------------------------------------------------------------------------------ network
# Fail fast when the network is down: a short TCP connect decides whether a host answers at all, before
# huggingface_hub's downloader (which retries a refused connection five times, a second apart, logging
# each). A host found unreachable is not asked again for a while in this process, so `lightsr download
# --all` offline prints one line per file in about a second, instead of minutes of retries.
CONNECT_TIMEOUT_S = 5.0
_UNREACHABLE_TTL_S = 60.0
_unreachable: dict[str, tuple[float, str]] = {}
_unreachable_lock = threading.Lock()


def _connect_target(url: str) -> tuple[str, str, int]:
    """(label, host, port) that a request to ``url`` first connects to: the proxy, if one applies."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        pp = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if pp.hostname:
            return f"{host} (via the proxy {pp.hostname}:{pp.port or 80})", pp.hostname, pp.port or 80
    return f"{host}:{port}", host, port


def _unreachable_reason(url: str) -> str | None:
    """Why ``url``'s host cannot be reached now (None: it answers), remembered for a minute."""
    label, host, port = _connect_target(url)
    key = f"{host}:{port}"
    now = time.monotonic()
    with _unreachable_lock:
        known = _unreachable.get(key)
        if known is not None and now - known[0] < _UNREACHABLE_TTL_S:
            return known[1]
    result: list[BaseException | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
            result.append(None)
        except OSError as exc:
            result.append(exc)

    # A thread with a deadline: create_connection's timeout does not bound the name lookup.
    worker = threading.Thread(target=attempt, daemon=True, name="lightsr-connect-check")
    worker.start()
    worker.join(CONNECT_TIMEOUT_S + 1.0)
    if result and result[0] is None:
        return None
    exc = result[0] if result else None
    why = (
        (getattr(exc, "strerror", None) or str(exc))
        if exc is not None
        else f"no answer in {CONNECT_TIMEOUT_S:g} s"
    )
    reason = f"{label} cannot be reached ({why})"
    _mark_unreachable(url, reason)
    return reason


def _mark_unreachable(url: str, reason: str) -> None:
    _, host, port = _connect_target(url)
    with _unreachable_lock:
        _unreachable[f"{host}:{port}"] = (time.monotonic(), reason)


def _forget_unreachable() -> None:
    """Clear the memory of unreachable hosts (tests; a caller that knows the network is back)."""
    with _unreachable_lock:
        _unreachable.clear()


_RETRY_CHATTER = ("Trying to resume download", "Max retries exceeded", "Retrying in", "Retrying (")
_QUIET_LOGGERS = ("huggingface_hub.file_download", "huggingface_hub.utils._http", "urllib3.connectionpool")
_quiet = threading.local()


class _QuietRetries(logging.Filter):
    """Drops huggingface_hub's and urllib3's per-retry warnings while lightsr downloads: lightsr reports
    the outcome in one line (the records of other callers in the process are left alone)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(_quiet, "on", False) or record.levelno > logging.WARNING:
            return True
        message = record.getMessage()
        return not any(s in message for s in _RETRY_CHATTER)


_QUIET_FILTER = _QuietRetries()


@contextmanager
def _quiet_retries() -> Iterator[None]:
    for name in _QUIET_LOGGERS:
        log = logging.getLogger(name)
        if _QUIET_FILTER not in log.filters:
            log.addFilter(_QUIET_FILTER)
    previous = getattr(_quiet, "on", False)
    _quiet.on = True
    try:
        yield
    finally:
        _quiet.on = previous


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))


def hf_hub_cache_dir() -> Path:
    """The Hugging Face cache folder, resolved from the environment the way huggingface_hub does it."""
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return _expand(env[name])
    if env.get("HF_HOME"):
        return _expand(env["HF_HOME"]) / "hub"
    if env.get("XDG_CACHE_HOME"):
        return _expand(env["XDG_CACHE_HOME"]) / "huggingface" / "hub"
    from huggingface_hub import constants

    return _expand(constants.HF_HUB_CACHE)


def hub_endpoint() -> str | None:
    """``HF_ENDPOINT`` as set now (None: huggingface_hub's own default)."""
    value = os.environ.get("HF_ENDPOINT", "").strip()
    return value.rstrip("/") or None


def lightsr_cache_dir() -> Path:
    """lightsr's own cache (weights converted from upstream): ``LIGHTSR_CACHE``, or ~/.cache/lightsr."""
    if os.environ.get(CACHE_ENV):
        return _expand(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return _expand(base) / "lightsr"


def upstream_url(record: dict[str, Any]) -> str:
    """The pinned upstream URL; ``LIGHTSR_UPSTREAM_ENDPOINT``, if set, replaces ``https://github.com``."""
    url = record["upstream"]["url"]
    base = os.environ.get(UPSTREAM_ENV, "").strip().rstrip("/")
    if base and url.startswith(GITHUB + "/"):
        url = base + url[len(GITHUB) :]
    return url


def _label(record: dict[str, Any]) -> str:
    variant = record.get("variant")
    extra = f" ({variant})" if variant and variant != "official" else ""
    return f"{record['model']} x{record['scale']}{extra}"


def _how_to_get(record: dict[str, Any]) -> str:
    scale = record["scale"]
    return (
        f"run `lightsr download {record['model']} --scale {scale}` while online, or download "
        f"{record['upstream']['filename']} from {record['upstream']['url']} yourself and pass "
        f"weights=PATH (a converted .safetensors file works too)"
    )


def is_published(record: dict[str, Any]) -> bool:
    """Whether ``record``'s weights are on the Hub (re-hostable, with a pinned revision) or upstream only."""
    return _published(record) is not None


def _published(record: dict[str, Any]) -> dict[str, str] | None:
    """The record's Hub location if it is re-hosted and published, else None (upstream only)."""
    hub = record.get("hub")
    if not hub or not hub.get("revision"):
        return None
    return hub


# ------------------------------------------------------------------------------------------ public-ish
@dataclass(frozen=True)
class Resolved:
    """Where verified weights were found: the file and how it got there (``hub``, ``upstream``, ``cache``)."""

    path: Path
    source: str


def resolve_weights(desc: ModelDescriptor) -> Path:
    """Local path of the verified converted weights for ``desc``, downloading them if needed."""
    return resolve(desc).path


def resolve(desc: ModelDescriptor) -> Resolved:
    """Hub first (when published), then the upstream fallback; offline, only the caches (see module doc)."""
    record = desc.record
    offline = offline_mode()
    _sync_hf_offline(offline)
    hub = _published(record)
    if hub is not None:
        # A file the fallback converted earlier (verified: byte-identical to the Hub's) saves the download.
        cached = _cached_converted(record)
        if cached is not None and cached == converted_path(record):
            return Resolved(cached, "cache")
        try:
            with _quiet_retries():
                found = _from_hub(record, hub, offline=offline)
        except _Unreachable as exc:
            # Offline or no connection: weights converted earlier by the fallback serve just as well.
            if cached is not None:
                return Resolved(cached, "cache")
            if offline:
                raise _offline_error(record) from None
            raise DownloadError(
                f"cannot reach the Hub for {_label(record)} weights ({hub['repo_id']}/{hub['filename']} at "
                f"{hub_endpoint() or 'the default endpoint'}): {exc.reason}. "
                "Check your connection or HF_ENDPOINT; "
                f"or {_how_to_get(record)}"
            ) from None
        if found is not None:
            return found
        logger.info(
            "%s: %s has no %s yet; using the upstream checkpoint",
            _label(record),
            hub["repo_id"],
            hub["filename"],
        )
    with _quiet_retries():
        return _from_upstream(desc, offline=offline)


def is_cached(record: dict[str, Any]) -> bool:
    """Whether weights for this manifest record are in a local cache (no network, no hashing)."""
    hub = _published(record)
    if hub is not None:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(
            hub["repo_id"], hub["filename"], cache_dir=hf_hub_cache_dir(), revision=hub["revision"]
        )
        if isinstance(hit, str):
            return True
    return any(
        path.is_file() and _read_sidecar(path).get("source_sha256") == record["upstream"]["sha256"]
        for path in (converted_path(record), upstream_copy_path(record))
    )


# ------------------------------------------------------------------------------------------ Hub
class _Unreachable(Exception):
    """The Hub could not be asked (offline mode, no connection) and its cache does not hold the file."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _from_hub(record: dict[str, Any], hub: dict[str, str], *, offline: bool) -> Resolved | None:
    """The verified file from the Hub (cache or download); None when the Hub lacks the repo/file/revision."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if not offline:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(
            hub["repo_id"], hub["filename"], cache_dir=hf_hub_cache_dir(), revision=hub["revision"]
        )
        if not isinstance(hit, str):  # it must be downloaded: is the Hub there at all?
            from huggingface_hub import constants

            reason = _unreachable_reason(hub_endpoint() or constants.ENDPOINT)
            if reason is not None:
                raise _Unreachable(reason)
    try:
        path = Path(
            hf_hub_download(
                hub["repo_id"],
                hub["filename"],
                revision=hub["revision"],
                cache_dir=hf_hub_cache_dir(),
                endpoint=hub_endpoint(),
                local_files_only=offline,
                library_name="lightsr",
                library_version=__version__,
            )
        )
    except GatedRepoError as exc:
        raise DownloadError(
            f"the Hub repo {hub['repo_id']} is gated: log in with `hf auth login` or set HF_TOKEN ({exc})"
        ) from exc
    except (RepositoryNotFoundError, RemoteEntryNotFoundError, RevisionNotFoundError):
        return None
    except LocalEntryNotFoundError as exc:
        reason = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else str(exc).splitlines()[0]
        raise _Unreachable(reason) from exc
    except HfHubHTTPError as exc:
        raise DownloadError(
            f"the Hub refused {hub['repo_id']}/{hub['filename']} for {_label(record)}: {exc}. "
            f"Retry later, or {_how_to_get(record)}"
        ) from exc
    except Exception as exc:  # network failures while streaming, disk full, ...
        raise DownloadError(
            f"downloading {hub['repo_id']}/{hub['filename']} failed ({type(exc).__name__}: {exc}). "
            f"Retry, or {_how_to_get(record)}"
        ) from exc
    _verify_hub_file(path, record, hub)
    return Resolved(path, "hub")


def _verify_hub_file(path: Path, record: dict[str, Any], hub: dict[str, str]) -> None:
    expected = record["file"].get("sha256")
    if not expected:
        raise WeightsIntegrityError(
            f"the manifest pins no sha256 for {hub['filename']} ({_label(record)}), "
            "so the Hub file cannot be "
            "verified; this is a packaging bug in lightsr (run scripts/update_manifest.py), please report it"
        )
    digest = sha256_file(path)
    if digest != expected:
        _evict_hub_file(path)
        raise WeightsIntegrityError(
            f"{hub['repo_id']}/{hub['filename']}@{hub['revision'][:12]} has sha256 {digest}, "
            "but the manifest pins "
            f"{expected}; the file was removed from the cache. If HF_ENDPOINT points to a mirror, the mirror "
            "serves a different file; otherwise retry (a corrupted download), then report it"
        )


def _evict_hub_file(pointer: Path) -> None:
    """Remove a snapshot entry and the blob behind it, so a bad file is never found in the cache again."""
    blob = Path(os.path.realpath(pointer))
    for p in (pointer, blob):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------------------------------ upstream
def converted_path(record: dict[str, Any]) -> Path:
    """Where the upstream fallback keeps the converted file for ``record`` (in lightsr's cache)."""
    return lightsr_cache_dir() / "weights" / record["file"]["filename"]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        return json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """Inter-process lock for one cache entry (huggingface_hub's own file lock)."""
    from huggingface_hub.utils import WeakFileLock

    lock = path.parent / ".locks" / (path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):
        yield


def upstream_copy_path(record: dict[str, Any]) -> Path:
    """Where the verified upstream file is kept when converting it here does not give the pinned bytes."""
    path = converted_path(record)
    return path.with_name(
        path.name.rsplit(".", 1)[0] + ".upstream" + Path(record["upstream"]["filename"]).suffix
    )


def _remove_entry(path: Path) -> None:
    for p in (path, _sidecar(path)):
        p.unlink(missing_ok=True)


def _check_converted(path: Path, record: dict[str, Any]) -> Path | None:
    """The verified cache entry for ``record`` (converted file, else kept upstream file), or None.

    Each is checked against the sha256 the *manifest* pins (the converted file's, or the upstream file's),
    never only against its sidecar: a file swapped together with its sidecar is caught, online or not.
    Call under the lock.
    """
    upstream_copy = upstream_copy_path(record)
    for entry, pinned, what in (
        (path, record["file"].get("sha256"), "converted"),
        (upstream_copy, record["upstream"]["sha256"], "upstream"),
    ):
        if not entry.is_file():
            continue
        meta = _read_sidecar(entry)
        if (
            meta.get("source_sha256") != record["upstream"]["sha256"]
            or meta.get("format_version") != FORMAT_VERSION
        ):
            # Made from another upstream file or by an older format: not wrong, just not ours any more.
            _remove_entry(entry)
            continue
        expected = pinned or meta.get("sha256")
        digest = sha256_file(entry)
        if digest != expected:
            _remove_entry(entry)
            raise WeightsIntegrityError(
                f"the cached {entry} ({_label(record)}, the {what} file) has sha256 {digest}, not the "
                f"{expected} lightsr pins for it: the file was changed or damaged on disk and has been "
                "removed. Load again while online to download and convert it afresh"
            )
        return entry
    return None


def _cached_converted(record: dict[str, Any]) -> Path | None:
    path = converted_path(record)
    if not (path.is_file() or upstream_copy_path(record).is_file()):
        return None
    with _cache_lock(path):
        return _check_converted(path, record)


def _offline_error(record: dict[str, Any]) -> WeightsNotFoundError:
    hub = _published(record)
    where = (
        f"{hub['repo_id']}/{hub['filename']} in the Hugging Face cache ({hf_hub_cache_dir()}) or "
        if hub
        else ""
    )
    return WeightsNotFoundError(
        f"offline mode is on (HF_HUB_OFFLINE=1) and the {_label(record)} weights are not cached: looked for "
        f"{where}{converted_path(record)}. To get them, {_how_to_get(record)}"
    )


def _from_upstream(desc: ModelDescriptor, *, offline: bool) -> Resolved:
    record = desc.record
    path = converted_path(record)
    try:
        (path.parent / ".locks").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot write lightsr's cache {path.parent} ({exc}); set {CACHE_ENV} to a writable folder"
        ) from exc
    with _cache_lock(path):
        # Checked under the lock: a concurrent first load may have just finished the work.
        found = _check_converted(path, record)
        if found is not None:
            return Resolved(found, "cache")
        if offline:
            raise _offline_error(record)
        raw = path.with_name(f".{record['upstream']['filename']}.{uuid.uuid4().hex[:8]}.part")
        try:
            _download_upstream(record, raw)
            kept = _convert_into_cache(desc, raw, path)
        finally:
            raw.unlink(missing_ok=True)
    return Resolved(kept, "upstream")


class _TooLarge(Exception):
    """Raised from inside the download loop to stop a response that outgrows the pinned size."""


class _CappedFile:
    """A file that refuses to grow past ``limit`` bytes: the download stops there, not at the server's end."""

    def __init__(self, fh: Any, limit: int):
        self._fh = fh
        self.limit = limit

    def write(self, data: bytes) -> int:
        if self._fh.tell() + len(data) > self.limit:
            raise _TooLarge(self.limit)
        return self._fh.write(data)

    def __getattr__(self, name: str) -> Any:  # tell, seek, truncate, flush... as the real file
        return getattr(self._fh, name)


def _download_upstream(record: dict[str, Any], dst: Path) -> None:
    """Fetch the upstream checkpoint to ``dst`` and check its size and sha256 against the manifest."""
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get

    from lightsr._weights import max_checkpoint_bytes

    up = record["upstream"]
    url = upstream_url(record)
    reason = _unreachable_reason(url)
    if reason is not None:
        raise DownloadError(
            f"cannot download {up['filename']} for {_label(record)}: {reason}. Check your connection"
            f"{f' or {UPSTREAM_ENV}' if os.environ.get(UPSTREAM_ENV) else ''}; "
            f"offline, set HF_HUB_OFFLINE=1 and use cached weights, or {_how_to_get(record)}"
        )
    # The manifest pins every file's size: nothing beyond it is ever read (a missing size: the general bound).
    limit = int(up["size"]) if up.get("size") else max_checkpoint_bytes()
    logger.info("downloading %s weights from %s", _label(record), url)
    try:
        with open(dst, "wb") as fh:
            # No Hub token here: the upstream host is not the Hub.
            http_get(
                url,
                _CappedFile(fh, limit),
                headers={"user-agent": f"lightsr/{__version__}"},
                displayed_filename=up["filename"],
            )
    except _TooLarge:
        raise WeightsIntegrityError(
            f"{url} sent more than the {limit} bytes lightsr pins for {up['filename']} ({_label(record)}); "
            f"the download was stopped and nothing was kept. If {UPSTREAM_ENV} points to a mirror, the "
            "mirror serves a different file; otherwise report it"
        ) from None
    except HfHubHTTPError as exc:
        raise DownloadError(
            f"cannot download {up['filename']} for {_label(record)} from {url}: {str(exc).splitlines()[0]}. "
            f"If {UPSTREAM_ENV} is set, check it; otherwise download the file yourself and pass weights=PATH"
        ) from exc
    except Exception as exc:
        # The connection dropped after the check above (huggingface_hub has already retried).
        _mark_unreachable(url, f"{_connect_target(url)[0]} stopped answering ({type(exc).__name__})")
        raise DownloadError(
            f"cannot download {up['filename']} for {_label(record)} from {url} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Check your connection, or download the file yourself and pass weights=PATH"
        ) from exc
    size = dst.stat().st_size
    digest = sha256_file(dst)
    if digest != up["sha256"] or (up.get("size") is not None and size != up["size"]):
        raise WeightsIntegrityError(
            f"{url} served a file of {size} bytes with sha256 {digest}, but lightsr pins {up['filename']} "
            f"({up.get('size')} bytes, sha256 {up['sha256']}); it was not used or kept. "
            f"If {UPSTREAM_ENV} points "
            "to a mirror, the mirror serves a different file; otherwise retry (a corrupted download)"
        )


def _convert_into_cache(desc: ModelDescriptor, raw: Path, path: Path) -> Path:
    """Convert the verified upstream file; publish the result and its sidecar atomically, sidecar first.

    Returns the cache entry: the converted file, or, where this torch build converts to other bytes than
    the pinned ones, the verified upstream file itself (converted in memory at each load), so that every
    cached file can be checked against a sha256 the manifest pins.
    """
    record = desc.record
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        digest = convert_file(raw, tmp, desc)  # reads with torch.load(weights_only=True)
        expected = record["file"].get("sha256")
        meta = {
            "source_url": record["upstream"]["url"],
            "source_sha256": record["upstream"]["sha256"],
            "format_version": FORMAT_VERSION,
            "lightsr_version": __version__,
        }
        if expected and digest != expected:
            # The upstream bytes were verified; the conversion ran here, with this torch. Folding weight-norm
            # can differ in the last bit between torch builds, so this is worth a warning, not a refusal.
            warnings.warn(
                f"{_label(record)}: the weights converted here have sha256 {digest}, "
                f"not the {expected} in the "
                "manifest (made with the pinned torch); the source file was verified, so it is kept and "
                "converted at each load instead",
                RuntimeWarning,
                stacklevel=4,
            )
            kept = upstream_copy_path(record)
            meta.update(sha256=record["upstream"]["sha256"], size=raw.stat().st_size)
            atomic_write_bytes(json.dumps(meta, indent=2).encode() + b"\n", _sidecar(kept))
            os.replace(raw, kept)
            return kept
        meta.update(sha256=digest, size=tmp.stat().st_size)
        atomic_write_bytes(json.dumps(meta, indent=2).encode() + b"\n", _sidecar(path))
        os.replace(tmp, path)
        return path
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ maintainers
def publish_folder(
    repo_id: str,
    folder: str | os.PathLike[str],
    *,
    commit_message: str,
    token: str | None = None,
    private: bool = False,
) -> str:
    """Create ``repo_id`` if needed, upload ``folder`` as one commit; return the commit id (maintainers)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_endpoint(), token=token)
    api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(info.oid)
