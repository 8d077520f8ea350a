"""Module dependencies point one way (../shared/DESIGN.md): nothing imports a higher layer."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "lightsr"

# Lower number = lower layer. A module may import only modules of its own or a lower layer.
LAYERS = {
    "lightsr.errors": 0,
    "lightsr._version": 0,
    "lightsr.archs": 1,
    "lightsr.metrics": 1,
    "lightsr._zoo": 2,
    "lightsr._weights": 3,
    "lightsr._hub": 4,
    "lightsr._image": 5,
    "lightsr._tiling": 5,
    "lightsr._tilestats": 5,  # whole-image statistics and resize replay inside tiled runs
    "lightsr._fastpath": 5,
    "lightsr._backends": 5,
    "lightsr._planner": 5,  # what a call runs (options, whole or tiles): plain functions, no network
    "lightsr._runner": 5,  # running a plan: progress, out-of-memory retries
    "lightsr._engine": 6,
    "lightsr._evaluate": 7,
    "lightsr._api": 7,
    "lightsr._export": 7,
    "lightsr": 8,
    # The batch the CLI and lightsr.ray share: planning, safe writes, the one-file step, the summary.
    "lightsr._batch": 9,
    "lightsr.cli": 10,
    "lightsr.ray": 10,  # beside the CLI, not on it: both are built on lightsr._batch; `--ray` runs it
    "lightsr.__main__": 11,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    while parts:
        name = ".".join(parts)
        if name in LAYERS:
            return LAYERS[name]
        parts.pop()
    raise AssertionError(f"{module} has no layer in tests/test_layers.py; add it")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lightsr"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightsr"):
            found.add(node.module)
            # "from lightsr import errors" imports the lightsr.errors submodule, not the package API.
            if node.module == "lightsr":
                for alias in node.names:
                    sub = f"lightsr.{alias.name}"
                    if (PKG / f"{alias.name}.py").exists() or (PKG / alias.name).is_dir():
                        found.discard("lightsr")
                        found.add(sub)
    return found


def test_imports_point_downwards() -> None:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = _module_name(path)
        mine = _layer(me)
        for imp in _imports(path):
            if imp == me or imp.startswith(me + ".") and me != "lightsr":
                continue
            if _layer(imp) > mine:
                bad.append(f"{me} (layer {mine}) imports {imp} (layer {_layer(imp)})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


# lightsr._batch is private only to keep it out of the API: it is the CLI's own batch code (shared with
# lightsr.ray) and is itself held to the public API, so the CLI still rests on nothing but the public API.
PUBLIC_API_ONLY = {"cli.py": {"lightsr._batch"}, "_batch.py": set()}


def test_cli_uses_public_api_only() -> None:
    for file, allowed in PUBLIC_API_ONLY.items():
        imports = _imports(PKG / file) - allowed
        private = sorted(i for i in imports if i.split(".")[-1].startswith("_"))
        assert not private, f"{file} must import only the public API, found {private}"


def test_only_hub_imports_huggingface_hub() -> None:
    users = []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "huggingface_hub" for n in names):
                users.append(_module_name(path))
    assert set(users) <= {"lightsr._hub"}, users
