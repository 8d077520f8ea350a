"""The documentation works as written: generated parts are fresh, examples run, links resolve, pictures are
fit.

- Every generated block of README.md and docs/*.md matches what scripts/gen_docs.py renders now (the check
  runs in-process), and the figure records match their inputs.
- Every ```python block and every ```bash block of README.md and docs/*.md runs, in page order with one
  namespace per page, in a scratch folder whose parent holds ``shared`` (so ``../shared/...`` paths work as
  from the repository root) and which holds what the pages assume a reader has: ``photo.jpg``, ``photos/``,
  ``Set5/`` and the official checkpoints under their upstream names (``RFDN_AIM.pth``, ...). Python blocks
  that start with ``>>>`` are doctests (their output is checked); bash blocks run ``lightsr`` in-process and
  must exit 0; ``export`` sets the variable for the rest of the page; ``pip install`` and ``python -m pytest``
  are what this environment already did. A block preceded by ``<!-- docs-test: skip REASON -->`` is skipped.
- Downloads work without the internet: a loopback server (tests/hubserver.py) serves the official checkpoints
  at their pinned upstream URLs (LIGHTSR_UPSTREAM_ENDPOINT), so ``load_model("rfdn")`` without ``weights=``
  runs the real download, sha256 check, conversion and cache.
- The docstring examples of every public name (``lightsr.__all__`` and ``lightsr.metrics``) run as doctests
  in the same setting. The generated API reference shows exactly these examples, so its blocks are not run
  twice.
"""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import io
import json
import re
import shlex
import signal
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import lightsr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_PICTURE_BYTES = 300_000
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s+(?P<reason>\S.*?)\s*-->")


def _load_script(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"lightsr_scripts_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _load_script("gen_docs")


# ------------------------------------------------------------------------------------------- page parsing
@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason, when marked to be skipped
    generated: str | None  # the generated block it sits in, if any


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    generated: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        begin = re.match(r"<!-- BEGIN GENERATED: ([a-z0-9-]+) -->", line)
        if begin:
            generated = begin.group(1)
        elif line.startswith("<!-- END GENERATED"):
            generated = None
        fence = re.match(r"^```([\w+-]*)\s*$", line)
        if fence:
            start = i
            i += 1
            body = []
            while i < len(lines) and not re.match(r"^```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            j = start - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            marker = SKIP.search(lines[j]) if j >= 0 else None
            out.append(
                Block(
                    page,
                    start + 1,
                    fence.group(1),
                    "\n".join(body) + "\n",
                    marker.group("reason") if marker else None,
                    generated,
                )
            )
        i += 1
    return out


def runnable(page: Path) -> list[Block]:
    # API-reference blocks are the public docstrings' examples, run by test_docstring_examples.
    return [b for b in blocks(page) if b.lang in ("python", "bash", "sh") and b.generated != "api-reference"]


# ------------------------------------------------------------------------------------------- sandbox
@pytest.fixture(scope="session")
def upstream_server(weights_dir: Path) -> Iterator[HubServer]:
    """Serves every official checkpoint at its pinned upstream URL; the Hub itself has no repos."""
    manifest = json.loads((ROOT / "weights_manifest.json").read_text(encoding="utf-8"))
    with HubServer() as server:
        for rec in manifest["weights"]:
            up = rec.get("upstream") or {}
            src = weights_dir / up.get("filename", "")
            if up.get("url") and src.is_file():
                server.add_upstream(up["url"], src.read_bytes())
        yield server


def _photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, 128 + 60 * np.sin(x / 3.0)], axis=-1)
    base[height // 3 : 2 * height // 3, width // 4 : width // 2] = (30, 30, 30)  # a hard-edged block
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture
def sandbox(
    tmp_path: Path,
    shared_dir: Path,
    weights_dir: Path,
    bench_dir: Path,
    upstream_server: HubServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A reader's folder: photo.jpg, photos/, Set5/, the checkpoints under their upstream names; ../shared."""
    (tmp_path / "shared").symlink_to(shared_dir, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    _photo(48, 40, 0).save(work / "photo.jpg", quality=92)
    (work / "photos").mkdir()
    _photo(32, 24, 1).save(work / "photos" / "beach.png")
    _photo(28, 28, 2).convert("L").save(work / "photos" / "street.png")
    (work / "Set5").symlink_to(bench_dir / "Set5", target_is_directory=True)
    manifest = json.loads((ROOT / "weights_manifest.json").read_text(encoding="utf-8"))
    names: dict[str, set[str]] = {}
    for rec in manifest["weights"]:
        up = rec.get("upstream") or {}
        if up.get("filename") and up.get("path"):
            names.setdefault(Path(up["path"]).name, set()).add(up["filename"])
            names.setdefault(up["filename"], set()).add(up["filename"])
    for name, sources in names.items():
        if (
            len(sources) == 1 and (weights_dir / next(iter(sources))).is_file()
        ):  # ambiguous names (model_best.pt) left out
            (work / name).symlink_to(weights_dir / next(iter(sources)))
    monkeypatch.chdir(work)
    monkeypatch.setenv("LIGHTSR_UPSTREAM_ENDPOINT", upstream_server.url)
    monkeypatch.setenv("HF_ENDPOINT", upstream_server.url)  # nothing is published there: upstream fallback
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("COLUMNS", "100")
    return work


# ------------------------------------------------------------------------------------------- running blocks
def _run_cli(argv: list[str]) -> int:
    from lightsr.cli import main

    previous = signal.getsignal(signal.SIGTERM)  # main() installs its own handler; keep pytest's
    try:
        return int(main(argv))
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _commands(code: str) -> Iterator[tuple[int, list[str]]]:
    """(line offset, argv) for each command of a shell block; ``&&`` splits, ``#`` starts a comment."""
    lines = code.replace("\\\n", " ").splitlines()
    for k, line in enumerate(lines):
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        argv: list[str] = []
        for token in lex:
            if token == "&&":
                if argv:
                    yield k, argv
                argv = []
            else:
                argv.append(token)
        if argv:
            yield k, argv


def run_bash(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    where = f"{block.page.name}:{block.line}"
    for k, argv in _commands(block.code):
        here = f"{where}+{k + 1}"
        if argv[0] == "pip" or argv[:3] == ["python", "-m", "pip"]:
            continue  # installing: this environment is installed already
        if argv[:3] == ["python", "-m", "pytest"]:
            continue  # this very test run
        if argv[0] == "export":
            for assignment in argv[1:]:
                key, _, value = assignment.partition("=")
                monkeypatch.setenv(key, value)
            continue
        if argv[0] == "lightsr" or argv[:3] == ["python", "-m", "lightsr"]:
            args = argv[1:] if argv[0] == "lightsr" else argv[3:]
            rc = _run_cli(args)
            assert rc == 0, f"{here}: `{shlex.join(argv)}` exited with {rc}"
            continue
        pytest.fail(
            f"{here}: `{shlex.join(argv)}` cannot run in the docs test; run it another way, or mark the "
            "block with <!-- docs-test: skip REASON -->"
        )


def run_python(block: Block, namespace: dict[str, Any]) -> None:
    where = f"{block.page.name}:{block.line}"
    if block.code.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(block.code, namespace, where, str(block.page), block.line)
        report = io.StringIO()
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test, out=report.write, clear_globs=False)
        assert runner.failures == 0, f"{where}: doctest failed\n{report.getvalue()}"
    else:
        # Padded with blank lines so tracebacks give the page's own line numbers.
        exec(compile("\n" * block.line + block.code, str(block.page), "exec"), namespace)  # noqa: S102


# Examples that score a whole benchmark, fetch every model or start a Ray cluster take tens of seconds on a
# small CPU: they run in CI (``-m slow`` included), not in the developer's fast loop.
SLOW_MARKERS = ("evaluate(", "lightsr benchmark", "download --all", "ray.init(")


def _is_slow(code: str) -> bool:
    return any(marker in code for marker in SLOW_MARKERS)


PAGE_PARAMS = [
    pytest.param(
        p,
        id=str(p.relative_to(ROOT)),
        marks=[pytest.mark.slow] if _is_slow("".join(b.code for b in runnable(p))) else [],
    )
    for p in PAGES
]


@pytest.mark.parametrize("page", PAGE_PARAMS)
def test_page_examples_run(page: Path, sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    todo = runnable(page)
    if not todo:
        pytest.skip(f"{page.name} has no python or bash examples")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for block in todo:
        if block.skip:
            continue
        if block.lang == "python":
            run_python(block, namespace)
        else:
            run_bash(block, monkeypatch)


def test_skip_markers_are_rare_and_explained() -> None:
    skipped = [f"{b.page.name}:{b.line} ({b.skip})" for p in PAGES for b in runnable(p) if b.skip]
    # Each is a command that cannot run here (an upload, a network-only step); keep the list short.
    assert len(skipped) <= 3, skipped


def test_block_parser_sees_examples_and_markers(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "x\n```python\na = 1\n```\n<!-- docs-test: skip uploads -->\n\n```bash\nlightsr upload\n```\n"
        "<!-- BEGIN GENERATED: api-reference -->\n```python\n>>> 1\n1\n```\n"
        "<!-- END GENERATED: api-reference -->\n```text\nnot code\n```\n",
        encoding="utf-8",
    )
    found = blocks(page)
    assert [(b.lang, b.skip, b.generated) for b in found] == [
        ("python", None, None),
        ("bash", "uploads", None),
        ("python", None, "api-reference"),
        ("text", None, None),
    ]
    assert [b.lang for b in runnable(page)] == ["python", "bash"]
    assert list(_commands("pip install x && lightsr a 'b c'  # note\nexport A=1\n")) == [
        (0, ["pip", "install", "x"]),
        (0, ["lightsr", "a", "b c"]),
        (1, ["export", "A=1"]),
    ]


def test_unrunnable_command_fails_with_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = Block(tmp_path / "p.md", 3, "bash", "curl https://example.com\n", None, None)
    with pytest.raises(pytest.fail.Exception, match="docs-test: skip"):
        run_bash(block, monkeypatch)


def test_failing_example_fails(tmp_path: Path) -> None:
    block = Block(tmp_path / "p.md", 1, "python", ">>> 1 + 1\n3\n", None, None)
    with pytest.raises(AssertionError, match="doctest failed"):
        run_python(block, {})


# ------------------------------------------------------------------------------------------- docstrings
def _public_objects() -> list[tuple[str, Any]]:
    objs: list[tuple[str, Any]] = [("lightsr", lightsr)]
    objs += [(f"lightsr.{n}", getattr(lightsr, n)) for n in lightsr.__all__ if n != "__version__"]
    metrics = getattr(lightsr, "metrics", None)
    if metrics is None:
        from lightsr import metrics
    if "metrics" not in lightsr.__all__:
        objs.append(("lightsr.metrics", metrics))
    return objs


def _public_doctests() -> dict[str, doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found: dict[str, doctest.DocTest] = {}
    for qualname, obj in _public_objects():
        module = obj if isinstance(obj, types.ModuleType) else inspect.getmodule(obj)
        for test in finder.find(obj, qualname, module=module):
            if test.examples:
                found.setdefault(test.name, test)
    return found


DOCTESTS = _public_doctests()


def test_public_names_have_examples() -> None:
    """Every public function and class shows at least one example (the standards ask for one)."""
    missing = []
    for name in lightsr.__all__:
        obj = getattr(lightsr, name)
        if name == "__version__" or isinstance(obj, types.ModuleType):
            continue
        if not any(t == f"lightsr.{name}" or t.startswith(f"lightsr.{name}.") for t in DOCTESTS):
            missing.append(name)
    assert not missing, f"public names without a docstring example: {missing}"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n, marks=[pytest.mark.slow] if _is_slow("".join(e.source for e in DOCTESTS[n].examples)) else []
        )
        for n in sorted(DOCTESTS)
    ],
)
def test_docstring_examples(name: str, sandbox: Path) -> None:
    test = DOCTESTS[name]
    test.globs = dict(test.globs)  # each run starts from the module's namespace
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=report.write)
    assert runner.failures == 0, f"docstring example of {name} failed:\n{report.getvalue()}"


# ------------------------------------------------------------------------------------------- generated parts
def test_generated_docs_are_up_to_date() -> None:
    problems = gen_docs.stale()
    assert not problems, "generated docs are stale; run python scripts/gen_docs.py\n" + "\n".join(
        diff for _, diff in problems
    )


def test_figures_match_their_inputs() -> None:
    assert gen_docs.stale_figures() == []


def test_check_mode_fails_when_a_block_is_stale(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    page.write_text(
        "<!-- BEGIN GENERATED: models-table -->\nold table\n<!-- END GENERATED: models-table -->\n",
        encoding="utf-8",
    )
    (problem,) = gen_docs.stale([page])
    assert "old table" in problem[1]
    page.write_text(gen_docs.render(page.read_text(encoding="utf-8"), page), encoding="utf-8")
    assert gen_docs.stale([page]) == []


def test_unknown_block_name_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "x.md"
    with pytest.raises(KeyError, match="unknown generated block"):
        gen_docs.render("<!-- BEGIN GENERATED: no-such -->\n<!-- END GENERATED: no-such -->\n", page)


def test_every_error_class_has_cause_and_fix() -> None:
    for cls in gen_docs.error_classes():
        meaning, causes, fixes = gen_docs.error_help(cls)
        assert meaning and causes and fixes, cls.__name__
        assert all(item and "\n" not in item for item in causes + fixes), cls.__name__
    text = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    for cls in gen_docs.error_classes():
        assert f"\n### {cls.__name__}\n" in text


def test_error_help_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightsr.errors import DeviceError

    monkeypatch.setattr(DeviceError, "__doc__", "The requested device is not available.")
    with pytest.raises(KeyError, match="DeviceError"):
        gen_docs.gen_errors(ROOT / "docs" / "troubleshooting.md")


def test_error_help_reads_wrapped_bullets() -> None:
    class Example(Exception):
        """What it means,
        on two lines.

        Causes:
            - one cause, wrapped
              over two lines
            - another

        What to do:
            - the fix
        """

    assert gen_docs.error_help(Example) == (
        "What it means,\non two lines.",
        ["one cause, wrapped over two lines", "another"],
        ["the fix"],
    )


def test_every_model_has_an_architecture_sketch() -> None:
    """Every model's sketch is in its family module, and every sketch belongs to a model of that family."""
    from lightsr.archs import FAMILIES, get_family

    models = json.loads((ROOT / "weights_manifest.json").read_text(encoding="utf-8"))["models"]
    for name, info in models.items():
        assert gen_docs.architecture_sketch(name, info["arch"]).strip(), name
    for arch in FAMILIES:
        mine = {name for name, info in models.items() if info["arch"] == arch}
        assert set(get_family(arch).SKETCHES) == mine, arch


def test_every_public_name_is_in_the_api_reference() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for name in lightsr.__all__:
        heading = (
            "### lightsr." + name.replace("_", "\\_") if name.startswith("__") else f"### lightsr.{name}"
        )
        assert f"\n{heading}\n" in text, f"{name} is not documented in docs/api.md"
    from lightsr import metrics

    for name in metrics.__all__:
        assert f"\n#### metrics.{name}\n" in text or f"\n### lightsr.metrics.{name}\n" in text


def test_every_cli_subcommand_is_documented_with_an_example() -> None:
    from lightsr.cli import build_parser

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    examples = " ".join(b.code for b in blocks(ROOT / "docs" / "cli.md") if b.lang == "bash")
    for name in gen_docs.subcommands(build_parser()):
        assert f"\n### lightsr {name}\n" in text, f"`lightsr {name} --help` is missing from docs/cli.md"
        assert f"lightsr {name}" in examples, f"docs/cli.md has no example of `lightsr {name}`"


# ------------------------------------------------------------------------------------------- links, pictures
def _slug(heading: str) -> str:
    text = re.sub(r"\\(.)", r"\1", heading.strip().lower())  # markdown escapes render as the character
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_fence:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
        out.update(re.findall(r'<a (?:id|name)="([^"]+)"', line))
    return out


def links(page: Path) -> list[tuple[int, str]]:
    out = []
    in_fence = False
    for k, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        out += [(k, target) for target in re.findall(r"\]\(([^)\s]+)\)", line)]
    return out


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_links_resolve(page: Path) -> None:
    broken = []
    for line, target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{page.name}:{line}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.name}:{line}: {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


def test_readme_picture_exists_and_is_small() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/images/comparison.png)" in text
    pictures = sorted((ROOT / "docs" / "images").glob("*.png"))
    assert ROOT / "docs" / "images" / "comparison.png" in pictures
    for png in pictures:
        assert png.stat().st_size < MAX_PICTURE_BYTES, f"{png.name} is {png.stat().st_size} bytes"
        with Image.open(png) as im:
            im.verify()


def test_plotting_is_a_development_dependency_only() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not any(d.lower().startswith("matplotlib") for d in project["dependencies"])
    assert any(d.lower().startswith("matplotlib") for d in project["optional-dependencies"]["dev"])
    for source in (ROOT / "lightsr").rglob("*.py"):
        assert "matplotlib" not in source.read_text(encoding="utf-8"), f"{source} mentions matplotlib"


def test_readme_setup_commands_are_untouched_by_generation() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert "GENERATED" not in section


# ------------------------------------------------------------------------------------------- generators
def test_models_table_shows_pending_until_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = json.loads((ROOT / "weights_manifest.json").read_text(encoding="utf-8"))
    rec = next(r for r in manifest["weights"] if r["model"] == "rfdn" and r["scale"] == 4)
    rec["metrics"]["reproduced"] = None
    rec["params"] = None
    monkeypatch.setattr(gen_docs, "load_manifest", lambda: manifest)
    row = next(
        line for line in gen_docs.gen_models_table(ROOT / "README.md").splitlines() if "#rfdn)" in line
    )
    assert row.split("|")[3].strip() == "pending" and row.split("|")[6].strip() == "pending"
    rec["metrics"]["reproduced"] = {"Set5": {"psnr_y": 32.15887, "ssim_y": 0.89459}}
    rec["params"] = 433448
    row = next(
        line for line in gen_docs.gen_models_table(ROOT / "README.md").splitlines() if "#rfdn)" in line
    )
    assert row.split("|")[3].strip() == "433,448" and row.split("|")[6].strip() == "32.16"


def test_result_tables_render_the_documented_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = ROOT / "docs" / "tiling-and-precision.md"
    assert "Pending" in gen_docs.gen_tiling_table(page) or (gen_docs.RESULTS / "tiling.json").is_file()
    (tmp_path / "tiling.json").write_text(gen_docs.TILING_SHAPE, encoding="utf-8")
    (tmp_path / "precision.json").write_text(gen_docs.PRECISION_SHAPE, encoding="utf-8")
    monkeypatch.setattr(gen_docs, "RESULTS", tmp_path)
    tiling = gen_docs.gen_tiling_table(page)
    assert "| rfdn | x4 | 28.6451 | +0.0000 | -0.0002 |" in tiling
    assert "| rfdn | x4 | 9.10 | 9.20 | 11.00 |" in tiling  # seconds: whole, auto, 64
    precision = gen_docs.gen_precision_table(page)
    assert "| rfdn | x4 | 32.1589 | -0.0018 |" in precision


def test_speed_points_read_the_documented_shape(tmp_path: Path) -> None:
    figures = gen_docs._figures_module()
    data = {
        "kind": "speed",
        "device": "cpu: test",
        "rows": [
            {"model": "rfdn", "scale": 4, "precision": "fp32", "ms": 40.0},
            {"model": "imdn", "scale": 2, "precision": "bf16", "seconds": 0.02, "device": "cpu: other"},
            {"model": "no-such-model", "scale": 4, "ms": 1.0},
        ],
    }
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    points = figures.speed_points([path])["points"]
    assert [(p["model"], p["scale"], p["ms"], p["device"]) for p in points] == [
        ("imdn", 2, 20.0, "cpu: other"),
        ("rfdn", 4, 40.0, "cpu: test"),
    ]
    assert all(p["psnr_source"] in ("lightsr", "official code") for p in points)


def test_speed_table_says_what_share_of_peak_each_target_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plain at 80% of its peak, fast fp32 no faster: 1.5x would need 80 * 1.5 = 120% of the peak.
    # auto (bf16) at 100 ms against plain's 200 ms and 40% of its peak: 5x would need 40 * 5 / 2 = 100%.
    def row(variant: str, precision: str, ms: float, pct: float) -> dict[str, Any]:
        return {
            "model": "rfdn",
            "scale": 4,
            "variant": variant,
            "precision": precision,
            "input": [180, 320],
            "ms": ms,
            "speedup": 200.0 / ms,
            "gmac": 23.8,
            "percent_of_peak": pct,
            "rounds": 2,
        }

    data = {
        "kind": "speed",
        "machine": {"cpu": "test"},
        "rounds": 2,
        "rows": [
            row("plain", "fp32 plain PyTorch", 200.0, 80.0),
            row("fast fp32", "fp32", 200.0, 80.0),
            row("fast auto", "bf16", 100.0, 40.0),
        ],
    }
    (tmp_path / "speed.json").write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setattr(gen_docs, "RESULTS", tmp_path)
    line = next(
        s
        for s in gen_docs.gen_speed_table(ROOT / "docs" / "performance.md").splitlines()
        if s.startswith("| rfdn")
    )
    assert line.rstrip(" |").endswith("80% / 80% / 40% | 120% / 100%")


def test_speed_table_says_when_peaks_were_measured_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {
        "kind": "speed",
        "machine": {"cpu": "test"},
        "rounds": 2,
        "rows": [],
        "conv_peaks_gflops": [{"width": 50, "precision": "fp32", "gflops": 160.0}],
    }
    monkeypatch.setattr(gen_docs, "RESULTS", tmp_path)
    texts = {}
    for name, extra in (
        ("once", {}),
        ("twice", {"conv_peaks_first_gflops": []}),
        ("lower", {"conv_peaks_first_gflops": [{"width": 50, "precision": "fp32", "gflops": 83.0}]}),
    ):
        (tmp_path / "speed.json").write_text(json.dumps({**base, **extra}), encoding="utf-8")
        texts[name] = gen_docs.gen_speed_table(ROOT / "docs" / "performance.md")
    assert "width 50 fp32 160 GFLOP/s" in texts["once"] and "the higher kept" not in texts["once"]
    assert "measured before and after the rows, the higher kept" in texts["twice"]
    assert "Lower first measurements" not in texts["twice"]
    assert "Lower first measurements: width 50 fp32 83." in texts["lower"]


def test_benchmark_keeps_the_higher_of_two_peak_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    speed = gen_docs._speed_module()
    import torch

    cpu = torch.device("cpu")
    measured = iter([100e9, 300e9, 150e9, 200e9])  # first widths 8, 16; then again: 8 rises, 16 falls
    monkeypatch.setattr(speed, "_measure_peak", lambda *args: next(measured))
    monkeypatch.setattr(speed, "_PEAK_CACHE", {})
    assert speed.conv_peak(8, torch.float32, cpu) == 100e9
    assert speed.conv_peak(16, torch.float32, cpu) == 300e9
    # A row of 1 GMAC on width 8 in 10 ms: 200 GFLOP/s, 200% of the low first peak.
    row = speed.Row(
        "toy x4",
        (4, 4),
        1.0,
        1.0,
        8,
        "fp32",
        {"plain": [0.01]},
        {"plain": 1.0},
        0.0,
        None,
        dtypes={"plain": torch.float32},
    )
    row.update_pct_peak(cpu)
    assert row.pct_peak["plain"] == pytest.approx(200.0)
    both = speed.remeasure_peaks(cpu)
    assert both == {(8, torch.float32): (100e9, 150e9), (16, torch.float32): (300e9, 200e9)}
    assert (
        speed.conv_peak(8, torch.float32, cpu) == 150e9 and speed.conv_peak(16, torch.float32, cpu) == 300e9
    )
    row.update_pct_peak(cpu)
    assert row.pct_peak["plain"] == pytest.approx(200.0 * 100 / 150)
