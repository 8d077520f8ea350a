"""Shared fixtures, the order CI's two workers take the heavy tests in, and one torch thread per worker.

../shared (or $LIGHTSR_SHARED) holds the official checkpoints and the benchmark images. Only the tests that
need it ask for it (the ``shared_dir``, ``weights_dir`` and ``bench_dir`` fixtures): without it they are
skipped, with the reason, so the rest of the suite still runs on a bare checkout. Under ``CI=true`` (set by
.ci/run) they fail instead: CI must never pass by skipping the accuracy checks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LIGHTSR_SHARED", REPO_ROOT.parent / "shared")).resolve()
WEIGHTS_DIR = SHARED / "weights"
BENCH_DIR = SHARED / "benchmarks"


def _require_shared() -> None:
    if WEIGHTS_DIR.is_dir() and (BENCH_DIR / "Set5").is_dir():
        return
    why = (
        f"../shared is missing or incomplete (looked for {WEIGHTS_DIR} and {BENCH_DIR / 'Set5'}): this test "
        "needs the official checkpoints and benchmark images; set LIGHTSR_SHARED to their folder"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    _require_shared()
    return SHARED


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    _require_shared()
    return WEIGHTS_DIR


@pytest.fixture(scope="session")
def bench_dir() -> Path:
    _require_shared()
    return BENCH_DIR


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of tiny-input tests (restored afterwards): small inputs through small
    nets are thousands of tiny ops, and on the shared 2-core machine a second OpenMP thread cost 10-100x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def upstream(weights_dir: Path) -> Callable[[str], dict[str, Any]]:
    """Upstream (official) state dicts by file name, each read once per module; callers copy before
    mutating."""
    from lightsr._weights import read_upstream

    cache: dict[str, dict[str, Any]] = {}

    def get(filename: str) -> dict[str, Any]:
        if filename not in cache:
            cache[filename] = read_upstream(weights_dir / filename)
        return cache[filename]

    return get


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's real Hugging Face or lightsr cache, or the network."""
    root = tmp_path_factory.getbasetemp() / "caches"
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("LIGHTSR_CACHE", str(root / "lightsr"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


# --------------------------------------------------------------------------------------- parallel runs
def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # pyproject's addopts pass -n/--dist to pytest-xdist; with the plugin disabled (``-p no:xdist``, e.g. to
    # use a debugger) they would be unknown options. Accept them then, and run in this one process.
    if pluginmanager.has_plugin("xdist"):
        return
    group = parser.getgroup("xdist (disabled)")
    # _addoption: addoption refuses one-letter lowercase names outside pytest itself (xdist uses this too).
    group._addoption("-n", "--numprocesses", dest="numprocesses", default=None, help="ignored: xdist is off")
    group.addoption("--dist", dest="dist", default="no", help="ignored: xdist is off")
    group.addoption(
        "--no-loadscope-reorder", dest="loadscopereorder", action="store_false", help="ignored: xdist is off"
    )


def pytest_configure(config: pytest.Config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if os.environ.get("PYTEST_XDIST_WORKER") and workers > 1:
        import torch

        # N worker processes x (cores / N) threads: on CI's 2 cores, two single-threaded workers finish the
        # tiled runs (Python-heavy, many small convolutions) 1.5x sooner than one process with 2 threads.
        # Rounding: ops whose kernels split reductions over threads (channel statistics, lightsr's
        # single-thread statistics rewrite) round differently; measured PSNR changes are ~1e-5 dB.
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The heavy accuracy tests first, longest first, so the workers finish together (the rest keep their
    order, so module-scoped fixtures are still built once)."""
    from _results_cache import estimated_seconds

    cost = {item.nodeid: estimated_seconds(item) for item in items}
    heavy = sorted((it for it in items if cost[it.nodeid] > 0), key=lambda it: -cost[it.nodeid])
    items[:] = heavy + [it for it in items if cost[it.nodeid] == 0]
