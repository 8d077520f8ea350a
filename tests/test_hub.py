"""Weights from the Hugging Face Hub, the upstream fallback, the caches and offline mode (issue 3).

No internet: a Hub-compatible server on 127.0.0.1 (tests/hubserver.py) plays both the Hub (HF_ENDPOINT)
and GitHub (LIGHTSR_UPSTREAM_ENDPOINT). It serves files these tests convert from ../shared/weights with
`lightsr convert`'s own function, and the manifest records are pointed at them. huggingface_hub itself is
real and unpatched: every download below goes through hf_hub_download / http_get over HTTP.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

import lightsr
from lightsr import _hub, _zoo
from lightsr._api import convert_checkpoint
from lightsr.errors import DownloadError, WeightsIntegrityError, WeightsNotFoundError

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer

# rfdn x4 (MIT): re-hostable, so it lives on the Hub. fdiwn x2 (no license): upstream fallback only.
HUB_MODEL, HUB_SCALE, HUB_CKPT = "rfdn", 4, "RFDN_AIM_x4.pth"
UP_MODEL, UP_SCALE, UP_CKPT = "fdiwn", 2, "FDIWN_x2.pt"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def converted(weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The canonical files, made by the function behind `lightsr convert` from the official checkpoints."""
    out = tmp_path_factory.mktemp("converted")
    files = {}
    for model, scale, ckpt in ((HUB_MODEL, HUB_SCALE, HUB_CKPT), (UP_MODEL, UP_SCALE, UP_CKPT)):
        dst = out / f"{model}_x{scale}.safetensors"
        convert_checkpoint(weights_dir / ckpt, dst, model=model, scale=scale)
        files[model] = dst.read_bytes()
    return files


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fresh, empty caches for this test alone."""
    hf_home, lsr = tmp_path / "hf", tmp_path / "lightsr"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("LIGHTSR_CACHE", str(lsr))
    for name in (
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, at its first import: where that import happened inside
    # an offline test (``-k fdiwn``), every later test stayed offline.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return {"hf": hf_home / "hub", "lightsr": lsr}


@pytest.fixture
def manifest(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A private copy of the manifest that the tests may point at the local server."""
    data = copy.deepcopy(_zoo.load_manifest())
    monkeypatch.setattr(_zoo, "load_manifest", lambda: data)
    return data


def record(manifest: dict[str, Any], model: str, scale: int) -> dict[str, Any]:
    return next(
        r for r in manifest["weights"] if r["model"] == model and r["scale"] == scale and r["default"]
    )


@pytest.fixture
def server(caches: dict[str, Path], monkeypatch: pytest.MonkeyPatch, weights_dir: Path):
    _hub._forget_unreachable()
    with HubServer() as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.setenv("LIGHTSR_UPSTREAM_ENDPOINT", srv.url)
        yield srv
    _hub._forget_unreachable()


def closed_port_url() -> str:
    """An http://127.0.0.1 URL nothing listens on: connections are refused, as on a machine with no
    network."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def published(
    server: HubServer, manifest: dict[str, Any], converted: dict[str, bytes], weights_dir: Path
) -> dict[str, Any]:
    """rfdn x4 published on the local Hub; fdiwn x2's upstream checkpoint on the local 'GitHub'."""
    data = converted[HUB_MODEL]
    rec = record(manifest, HUB_MODEL, HUB_SCALE)
    commit = server.add_commit(
        rec["hub"]["repo_id"], {rec["hub"]["filename"]: data, "README.md": b"# card\n"}
    )
    rec["hub"]["revision"] = commit
    rec["file"].update(sha256=sha256(data), size=len(data))
    up = record(manifest, UP_MODEL, UP_SCALE)
    assert up["hub"] is None, "fdiwn weights state no license: they must never be re-hosted"
    up["file"].update(sha256=sha256(converted[UP_MODEL]), size=len(converted[UP_MODEL]))
    server.add_upstream(up["upstream"]["url"], (weights_dir / UP_CKPT).read_bytes())
    # rfdn's upstream too, for the tests where its Hub repo is missing.
    server.add_upstream(rec["upstream"]["url"], (weights_dir / HUB_CKPT).read_bytes())
    return {"hub": rec, "upstream": up, "commit": commit}


def files_under(root: Path) -> list[Path]:
    return (
        sorted(p for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts) if root.exists() else []
    )


def assert_same_weights(up: lightsr.Upscaler, reference: lightsr.Upscaler) -> None:
    a, b = up.module.state_dict(), reference.module.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- Hub


def test_first_load_downloads_from_hub_then_cache_works_offline(
    published: dict[str, Any],
    server: HubServer,
    caches: dict[str, Path],
    weights_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    up = lightsr.load_model(HUB_MODEL, scale=HUB_SCALE, device="cpu", precision="fp32")
    ref = lightsr.load_model(
        HUB_MODEL, scale=HUB_SCALE, weights=weights_dir / HUB_CKPT, device="cpu", precision="fp32"
    )
    assert_same_weights(up, ref)
    # One HEAD on the pinned commit, one GET of the blob on the CDN origin: a real hf_hub_download exchange.
    assert server.count("HEAD", "hub", f"/resolve/{published['commit']}/rfdn_x4.safetensors") == 1
    assert server.count("GET", "cdn", "/blobs/") == 1
    snapshot = (
        caches["hf"] / "models--lightsr--rfdn" / "snapshots" / published["commit"] / "rfdn_x4.safetensors"
    )
    assert snapshot.is_file() and sha256(snapshot.read_bytes()) == published["hub"]["file"]["sha256"]
    assert _hub.is_cached(published["hub"])
    assert not files_under(caches["lightsr"] / "weights"), (
        "a Hub file must not be duplicated in lightsr's cache"
    )

    # Second load: server gone and offline mode on; the commit-pinned cache entry is enough.
    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = lightsr.load_model(HUB_MODEL, scale=HUB_SCALE, device="cpu", precision="fp32")
    assert_same_weights(again, ref)
    assert _hub.resolve(again.descriptor).source == "hub"


def test_cached_file_needs_no_network_even_when_online(published: dict[str, Any], server: HubServer) -> None:
    desc = _zoo.describe(HUB_MODEL, HUB_SCALE)
    first = _hub.resolve_weights(desc)
    n = len(server.requests)
    server.stop()  # not offline mode: a pinned revision that is cached must not even be looked up
    assert _hub.resolve_weights(desc) == first
    assert len(server.requests) == n


def test_hf_token_sent_to_hub_but_never_to_upstream(
    published: dict[str, Any], server: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_lightsr_test_token")
    _hub.resolve_weights(_zoo.describe(HUB_MODEL, HUB_SCALE))
    _hub.resolve_weights(_zoo.describe(UP_MODEL, UP_SCALE))
    hub_auth = {r.headers.get("authorization") for r in server.requests if "/resolve/" in r.path}
    assert hub_auth == {"Bearer hf_lightsr_test_token"}
    assert all("authorization" not in r.headers for r in server.requests if "/raw/" in r.path)


def test_tampered_hub_file_raises_and_is_not_kept(
    published: dict[str, Any], server: HubServer, caches: dict[str, Path], converted: dict[str, bytes]
) -> None:
    rec = published["hub"]
    good = converted[HUB_MODEL]
    bad = bytearray(good)
    bad[-7] ^= 0x40  # one bit of one weight: still a valid safetensors file, just not the pinned one
    rec["hub"]["revision"] = server.add_commit(rec["hub"]["repo_id"], {rec["hub"]["filename"]: bytes(bad)})
    desc = _zoo.describe(HUB_MODEL, HUB_SCALE)
    with pytest.raises(WeightsIntegrityError, match="sha256") as info:
        lightsr.load_model(HUB_MODEL, scale=HUB_SCALE)
    assert rec["file"]["sha256"] in str(info.value) and "removed" in str(info.value)
    assert not any(sha256(p.read_bytes()) == sha256(bytes(bad)) for p in files_under(caches["hf"]))
    assert not _hub.is_cached(rec)

    # The server is fixed (a new commit, as a re-upload would make): the next load gets the good file.
    rec["hub"]["revision"] = server.add_commit(rec["hub"]["repo_id"], {rec["hub"]["filename"]: good})
    path = _hub.resolve_weights(desc)
    assert sha256(path.read_bytes()) == rec["file"]["sha256"]


def test_file_damaged_in_cache_is_caught_and_removed(published: dict[str, Any], server: HubServer) -> None:
    desc = _zoo.describe(HUB_MODEL, HUB_SCALE)
    path = _hub.resolve_weights(desc)
    blob = Path(os.path.realpath(path))
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-3] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError):
        _hub.resolve_weights(desc)
    assert not path.exists() and not blob.exists()
    # Next time it is downloaded again, intact.
    assert sha256(_hub.resolve_weights(desc).read_bytes()) == published["hub"]["file"]["sha256"]
    assert server.count("GET", "cdn", "/blobs/") == 2


def test_hub_error_is_a_download_error(
    published: dict[str, Any], server: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Hub endpoint that answers, but not like the Hub (no X-Repo-Commit): a mirror misconfiguration.
    monkeypatch.setenv("HF_ENDPOINT", server.cdn_url)
    with pytest.raises(DownloadError, match="HF_ENDPOINT"):
        _hub.resolve_weights(_zoo.describe(HUB_MODEL, HUB_SCALE))


# ---------------------------------------------------------------------------------------------- fallback


@pytest.mark.parametrize("missing", ["repo", "file"])
def test_missing_on_hub_falls_back_to_upstream(
    published: dict[str, Any],
    server: HubServer,
    caches: dict[str, Path],
    weights_dir: Path,
    converted: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    missing: str,
) -> None:
    rec = published["hub"]
    if missing == "repo":
        server.remove_repo(rec["hub"]["repo_id"])
    else:
        rec["hub"]["revision"] = server.add_commit(
            rec["hub"]["repo_id"], {}, delete=(rec["hub"]["filename"],)
        )
    up = lightsr.load_model(HUB_MODEL, scale=HUB_SCALE, device="cpu", precision="fp32")
    ref = lightsr.load_model(
        HUB_MODEL, scale=HUB_SCALE, weights=weights_dir / HUB_CKPT, device="cpu", precision="fp32"
    )
    assert_same_weights(up, ref)
    assert server.count("GET", "hub", "/njulj/RFDN/raw/") == 1
    kept = caches["lightsr"] / "weights" / rec["file"]["filename"]
    assert sha256(kept.read_bytes()) == rec["file"]["sha256"], (
        "fallback must produce the same bytes as the Hub"
    )
    assert [p.name for p in files_under(caches["lightsr"])] == [kept.name, kept.name + ".json"]

    # Once the Hub has the file, the identical converted copy is still used: no second download.
    rec["hub"]["revision"] = server.add_commit(
        rec["hub"]["repo_id"], {rec["hub"]["filename"]: converted[HUB_MODEL]}
    )
    n = len(server.requests)
    assert _hub.resolve(up.descriptor) == _hub.Resolved(kept, "cache") and len(server.requests) == n

    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _hub.resolve(up.descriptor) == _hub.Resolved(kept, "cache")


def test_unlicensed_model_comes_from_upstream_and_works_offline(
    published: dict[str, Any],
    server: HubServer,
    caches: dict[str, Path],
    weights_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The issue's own example: no argument beyond the name and scale.
    up = lightsr.load_model("fdiwn", scale=2, device="cpu", precision="fp32")
    assert server.count(contains="/resolve/") == 0, "never re-hosted: the Hub is not even asked"
    assert server.count("GET", "hub", "/IVIPLab/FDIWN/raw/") == 1
    rec = published["upstream"]
    kept = caches["lightsr"] / "weights" / rec["file"]["filename"]
    # Byte-identical to `lightsr convert` on the official checkpoint (the `converted` fixture).
    assert sha256(kept.read_bytes()) == rec["file"]["sha256"]
    meta = json.loads(kept.with_name(kept.name + ".json").read_text())
    assert meta["source_sha256"] == rec["upstream"]["sha256"] and meta["sha256"] == rec["file"]["sha256"]
    assert not list(caches["lightsr"].rglob("*.part")), "the raw upstream download is not kept"

    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _hub.resolve(up.descriptor) == _hub.Resolved(kept, "cache")


def test_tampered_upstream_raises_and_keeps_nothing(
    published: dict[str, Any], server: HubServer, caches: dict[str, Path], weights_dir: Path
) -> None:
    rec = published["upstream"]
    data = bytearray((weights_dir / UP_CKPT).read_bytes())
    data[len(data) // 2] ^= 0xFF
    server.add_upstream(rec["upstream"]["url"], bytes(data))
    with pytest.raises(WeightsIntegrityError, match=rec["upstream"]["sha256"]):
        lightsr.load_model("fdiwn", scale=2)
    assert files_under(caches["lightsr"]) == []


def test_damaged_converted_cache_is_caught_and_removed(published: dict[str, Any], server: HubServer) -> None:
    published["hub"]["hub"]["revision"] = None  # rfdn via the fallback: the same path as fdiwn, 10x faster
    desc = _zoo.describe(HUB_MODEL, HUB_SCALE)
    path = _hub.resolve_weights(desc)
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="changed or damaged"):
        _hub.resolve_weights(desc)
    assert not path.exists()
    assert sha256(_hub.resolve_weights(desc).read_bytes()) == published["hub"]["file"]["sha256"]


def test_upstream_not_found_is_a_download_error(
    published: dict[str, Any], server: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIGHTSR_UPSTREAM_ENDPOINT", server.url + "/nothing-here")
    with pytest.raises(DownloadError, match="LIGHTSR_UPSTREAM_ENDPOINT"):
        _hub.resolve_weights(_zoo.describe(UP_MODEL, UP_SCALE))


def test_unpublished_record_skips_the_hub(published: dict[str, Any], server: HubServer) -> None:
    published["hub"]["hub"]["revision"] = None  # as shipped before scripts/publish_weights.py has run
    assert _hub.resolve(_zoo.describe(HUB_MODEL, HUB_SCALE)).source == "upstream"
    assert server.count(contains="/resolve/") == 0


# ---------------------------------------------------------------------------------------------- offline


@pytest.mark.parametrize("model,scale", [(HUB_MODEL, HUB_SCALE), (UP_MODEL, UP_SCALE)])
def test_offline_with_empty_cache_says_what_is_missing(
    published: dict[str, Any], server: HubServer, monkeypatch: pytest.MonkeyPatch, model: str, scale: int
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rec = record(_zoo.load_manifest(), model, scale)
    with pytest.raises(WeightsNotFoundError) as info:
        lightsr.load_model(model, scale=scale)
    msg = str(info.value)
    assert "offline" in msg and rec["file"]["filename"] in msg and rec["upstream"]["filename"] in msg
    assert f"lightsr download {model} --scale {scale}" in msg and "weights=" in msg
    assert server.requests == [], "offline mode must not touch the network"


# ---------------------------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("model,scale", [(HUB_MODEL, HUB_SCALE), (UP_MODEL, UP_SCALE)])
def test_concurrent_first_loads_in_threads(
    published: dict[str, Any], server: HubServer, caches: dict[str, Path], model: str, scale: int
) -> None:
    desc = _zoo.describe(model, scale)
    results: list[Any] = [None, None]
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = _hub.resolve_weights(desc)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, Path) for r in results), results
    assert results[0] == results[1]
    assert sha256(results[0].read_bytes()) == desc.record["file"]["sha256"]
    leftovers = [
        p
        for p in files_under(caches["hf"]) + files_under(caches["lightsr"])
        if p.name.endswith((".part", ".incomplete"))
    ]
    assert leftovers == []
    if model == UP_MODEL:  # lightsr's own lock: the upstream file is fetched and converted once
        assert server.count("GET", "cdn", "/raw/") == 1


_CHILD = """
import json, sys
from lightsr import _hub, _zoo
data = json.load(open(sys.argv[1]))
_zoo.load_manifest = lambda: data
print(_hub.resolve(_zoo.describe(sys.argv[2], int(sys.argv[3]))).source)
"""


@pytest.mark.slow  # two fresh interpreters importing torch: ~15 s on a busy 2-core machine
def test_concurrent_first_loads_in_two_processes(
    published: dict[str, Any],
    server: HubServer,
    caches: dict[str, Path],
    manifest: dict[str, Any],
    tmp_path: Path,
) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), UP_MODEL, str(UP_SCALE)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    # One process downloaded and converted; the other waited on the lock and found it done.
    assert sorted(o[0].split()[-1] for o in outs) == ["cache", "upstream"]
    assert server.count("GET", "cdn", "/raw/") == 1
    kept = caches["lightsr"] / "weights" / published["upstream"]["file"]["filename"]
    assert sha256(kept.read_bytes()) == published["upstream"]["file"]["sha256"]
    assert [p.name for p in files_under(caches["lightsr"])] == [kept.name, kept.name + ".json"]


# ---------------------------------------------------------------------------------------------- API / CLI


def test_download_and_models(
    published: dict[str, Any],
    server: HubServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lightsr.cli import main

    info = {(m.name, m.scale): m for m in lightsr.list_models()}
    assert not info[(HUB_MODEL, HUB_SCALE)].cached and not info[(UP_MODEL, UP_SCALE)].cached
    assert main(["download", HUB_MODEL, "--scale", str(HUB_SCALE)]) == 0
    paths = lightsr.download_weights(UP_MODEL, scale=UP_SCALE)
    assert len(paths) == 1 and paths[0].is_file()
    info = {(m.name, m.scale): m for m in lightsr.list_models()}
    assert info[(HUB_MODEL, HUB_SCALE)].cached and info[(UP_MODEL, UP_SCALE)].cached
    capsys.readouterr()

    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    rows = {tuple(line.split()[:2]): line for line in table.splitlines()[1:] if line.strip()}
    assert "yes" in rows[(HUB_MODEL, f"x{HUB_SCALE}")] and "MIT" in rows[(HUB_MODEL, f"x{HUB_SCALE}")]
    assert "yes" in rows[(UP_MODEL, f"x{UP_SCALE}")] and "none" in rows[(UP_MODEL, f"x{UP_SCALE}")]
    assert rows[("imdn", "x2")].split()[-1] == "no"
    # A model that is not cached, offline: exit status 1 and the clear message, no traceback.
    assert main(["download", "imdn", "--scale", "2"]) == 1
    assert "lightsr download imdn --scale 2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- publishing


def _publish_script() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "publish_weights.py"
    spec = importlib.util.spec_from_file_location("publish_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publish_dry_run_folder_is_what_users_load(
    server: HubServer,
    manifest: dict[str, Any],
    converted: dict[str, bytes],
    weights_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = _publish_script()
    rec = record(manifest, HUB_MODEL, HUB_SCALE)
    rec["file"].update(sha256=sha256(converted[HUB_MODEL]), size=len(converted[HUB_MODEL]))
    mpath = tmp_path / "weights_manifest.json"
    mpath.write_text(json.dumps(manifest, indent=2) + "\n")
    before = mpath.read_bytes()
    out = tmp_path / "out"
    base = ["--manifest", str(mpath), "--weights-dir", str(weights_dir)]
    assert script.main(["--dry-run", str(out), "--model", HUB_MODEL, *base]) == 0
    assert mpath.read_bytes() == before, "a dry run must not touch the manifest"
    folder = out / rec["hub"]["repo_id"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "lightsr.json", rec["hub"]["filename"]]
    assert (folder / rec["hub"]["filename"]).read_bytes() == converted[HUB_MODEL]
    card = (folder / "README.md").read_text()
    for needle in (
        "license: mit",
        "library_name: lightsr",
        "arXiv:2009.11551",
        rec["upstream"]["url"],
        rec["upstream"]["sha256"],
        rec["file"]["sha256"],
        'lightsr.load_model("rfdn", scale=4)',
        "32.16 / 0.8946",
    ):  # REFERENCE.md's Set5 figure for the official RFDN checkpoint
        assert needle in card, needle

    # Upload exactly that folder to the local Hub and point the manifest at the commit, as publishing does.
    commit = server.add_commit(rec["hub"]["repo_id"], {p.name: p.read_bytes() for p in folder.iterdir()})
    script.write_revisions(mpath, {rec["hub"]["repo_id"]: commit})
    written = json.loads(mpath.read_text())
    assert record(written, HUB_MODEL, HUB_SCALE)["hub"]["revision"] == commit
    assert [r for r in written["weights"] if r["model"] != HUB_MODEL] == [
        r for r in manifest["weights"] if r["model"] != HUB_MODEL
    ]
    rec["hub"]["revision"] = commit
    assert _hub.resolve(_zoo.describe(HUB_MODEL, HUB_SCALE)).source == "hub"

    # Refusals: never re-host unlicensed weights; never publish a file the manifest would reject.
    capsys.readouterr()
    assert script.main(["--dry-run", str(out), "--model", "fdiwn", *base]) == 1
    assert "never re-hosts" in capsys.readouterr().err
    rec["file"]["sha256"] = "0" * 64
    mpath.write_text(json.dumps(manifest))
    assert script.main(["--dry-run", str(tmp_path / "out2"), "--model", HUB_MODEL, *base]) == 1
    assert "differs from the manifest" in capsys.readouterr().err


def test_publish_selects_only_licensed_weights() -> None:
    script = _publish_script()
    data = _zoo.load_manifest()
    repos = script.select(data, None)
    published = {r["model"] for recs in repos.values() for r in recs}
    unlicensed = {name for name, m in data["models"].items() if m["license"]["weights"] is None}
    assert {"imdn", "fdiwn", "pan"} <= unlicensed
    assert published == set(data["models"]) - unlicensed


# ---------------------------------------------------------------------------------------------- issue 18


def test_oversized_upstream_download_stops_at_the_pinned_size(
    published: dict[str, Any], server: HubServer, caches: dict[str, Path], weights_dir: Path
) -> None:
    # The imdn-rtc case of the issue, with fdiwn: the right file followed by 100 MiB it should not send.
    rec = published["upstream"]
    server.add_upstream(rec["upstream"]["url"], (weights_dir / UP_CKPT).read_bytes(), padding=100 << 20)
    with pytest.raises(WeightsIntegrityError, match=f"more than the {rec['upstream']['size']} bytes"):
        _hub.resolve_weights(_zoo.describe(UP_MODEL, UP_SCALE))
    sent = sum(n for path, n in server.sent.items() if path.startswith("/raw/"))
    # Stopped at the cap: what was sent is the pinned size plus what the sockets' buffers took, not 100 MiB.
    assert sent < rec["upstream"]["size"] + (16 << 20), sent
    assert files_under(caches["lightsr"]) == []


def test_cache_swapped_with_its_sidecar_is_caught_offline(
    published: dict[str, Any], server: HubServer, monkeypatch: pytest.MonkeyPatch, converted: dict[str, bytes]
) -> None:
    desc = _zoo.describe(UP_MODEL, UP_SCALE)
    path = _hub.resolve_weights(desc)
    # Another valid safetensors file in its place, with a sidecar rewritten to vouch for it.
    other = converted[HUB_MODEL]
    path.write_bytes(other)
    sidecar = path.with_name(path.name + ".json")
    meta = json.loads(sidecar.read_text())
    meta.update(sha256=sha256(other), size=len(other))
    sidecar.write_text(json.dumps(meta))
    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsIntegrityError, match=published["upstream"]["file"]["sha256"]):
        _hub.resolve_weights(desc)
    assert not path.exists() and not sidecar.exists()


def test_converted_bytes_differing_from_the_manifest_keep_the_verified_upstream_file(
    published: dict[str, Any],
    server: HubServer,
    caches: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    weights_dir: Path,
) -> None:
    # What a torch build that folds weight-norm differently produces: a converted file the manifest does
    # not pin. It cannot be verified later, so the verified upstream file is cached and used instead.
    rec = published["upstream"]
    rec["file"]["sha256"] = "0" * 64
    with pytest.warns(RuntimeWarning, match="converted at each load"):
        first = _hub.resolve(_zoo.describe(UP_MODEL, UP_SCALE))
    assert first.source == "upstream" and first.path == _hub.upstream_copy_path(rec)
    assert sha256(first.path.read_bytes()) == rec["upstream"]["sha256"]
    assert _hub.is_cached(rec)
    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lightsr._weights import load_checked

    desc = _zoo.describe(UP_MODEL, UP_SCALE)
    again = _hub.resolve(desc)
    assert again == _hub.Resolved(first.path, "cache")
    got, ref = load_checked(again.path, desc), load_checked(weights_dir / UP_CKPT, desc)
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in got)
    first.path.write_bytes(b"x" + first.path.read_bytes()[1:])  # damaged on disk: caught, removed
    with pytest.raises(WeightsIntegrityError, match=rec["upstream"]["sha256"]):
        _hub.resolve_weights(_zoo.describe(UP_MODEL, UP_SCALE))
    assert not first.path.exists()


def test_unreachable_upstream_fails_fast_in_one_line(
    published: dict[str, Any],
    server: HubServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import time

    monkeypatch.setenv("LIGHTSR_UPSTREAM_ENDPOINT", closed_port_url())
    t0 = time.monotonic()
    with caplog.at_level("DEBUG"), pytest.raises(DownloadError, match="cannot be reached") as info:
        _hub.resolve_weights(_zoo.describe(UP_MODEL, UP_SCALE))
    assert "\n" not in str(info.value) and "HF_HUB_OFFLINE=1" in str(info.value)
    # Known unreachable: the next file does not even try (huggingface_hub retried 5 times, 1 s apart, each).
    with pytest.raises(DownloadError, match="cannot be reached"):
        _hub.resolve_weights(_zoo.describe("imdn", 2))
    assert time.monotonic() - t0 < 5
    assert not [r for r in caplog.records if "resume" in r.getMessage() or "Retrying" in r.getMessage()]


def test_unreachable_hub_fails_fast(
    published: dict[str, Any], server: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    with pytest.raises(DownloadError, match="cannot reach the Hub.*cannot be reached"):
        _hub.resolve_weights(_zoo.describe(HUB_MODEL, HUB_SCALE))


def test_download_all_with_no_network_is_quick_and_one_line_per_file(tmp_path: Path) -> None:
    import time

    dead = closed_port_url()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(
        HF_ENDPOINT=dead,
        LIGHTSR_UPSTREAM_ENDPOINT=dead,
        HF_HOME=str(tmp_path / "hf"),
        LIGHTSR_CACHE=str(tmp_path / "lightsr"),
    )
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "lightsr", "download", "--all"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    lines = res.stderr.splitlines()
    assert res.returncode == 1 and res.stdout == ""
    assert len(lines) == len(_zoo.records()), res.stderr[-3000:]
    assert all(line.startswith("lightsr: error: ") and "cannot be reached" in line for line in lines)
    assert elapsed < 30, elapsed  # was 26 files x 6 attempts, a second apart (133 s on a dead network)


def test_offline_mode_switched_off_after_import_is_honoured(
    published: dict[str, Any], server: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # As after `HF_HUB_OFFLINE=1 python -c "import lightsr"`: huggingface_hub froze it at import.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not _hub.offline_mode()
    assert _hub.resolve(_zoo.describe(UP_MODEL, UP_SCALE)).source == "upstream"
    # ... and switched back on: honoured at the next call, with no request made.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(server.requests)
    with pytest.raises(WeightsNotFoundError, match="offline"):
        _hub.resolve(_zoo.describe("imdn", 2))
    assert len(server.requests) == n


def test_list_models_says_where_weights_come_from_today(published: dict[str, Any]) -> None:
    info = {(m.name, m.scale): m for m in lightsr.list_models()}
    assert info[(HUB_MODEL, HUB_SCALE)].hosted_on_hub  # the fixture published it
    published["hub"]["hub"]["revision"] = None
    info = {(m.name, m.scale): m for m in lightsr.list_models()}
    assert not info[(HUB_MODEL, HUB_SCALE)].hosted_on_hub, "an MIT model with no published revision"
    assert not info[(UP_MODEL, UP_SCALE)].hosted_on_hub


def test_shipped_manifest_publishes_nothing_yet() -> None:
    # docs/weights.md says so: when the maintainers publish, this test and that page change together.
    assert not any(m.hosted_on_hub for m in lightsr.list_models())
