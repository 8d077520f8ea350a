"""Shared fixtures. ../shared (official weights, benchmark images) is required: fail loudly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LIGHTSR_SHARED", REPO_ROOT.parent / "shared")).resolve()
WEIGHTS_DIR = SHARED / "weights"
BENCH_DIR = SHARED / "benchmarks"


def pytest_sessionstart(session: pytest.Session) -> None:
    if not (WEIGHTS_DIR.is_dir() and (BENCH_DIR / "Set5").is_dir()):
        raise pytest.UsageError(
            f"../shared is missing or incomplete (looked for {WEIGHTS_DIR} and {BENCH_DIR / 'Set5'}). "
            "The tests need the official checkpoints and benchmark images; set LIGHTSR_SHARED to their folder."
        )


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return WEIGHTS_DIR


@pytest.fixture(scope="session")
def bench_dir() -> Path:
    return BENCH_DIR


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's real Hugging Face or lightsr cache, or the network."""
    root = tmp_path_factory.getbasetemp() / "caches"
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("LIGHTSR_CACHE", str(root / "lightsr"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
