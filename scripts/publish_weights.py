#!/usr/bin/env python
"""Maintainers: convert the official checkpoints and publish them, with a model card, to the Hub repos
named in weights_manifest.json; then write each upload's commit id into the manifest (``hub.revision``).

Only records with a ``hub`` entry are published: weights whose upstream states no license (``hub: null``)
are never re-hosted, and this script refuses to publish them even when asked by name.

Every converted file must have the sha256 the manifest pins (``file.sha256``, from
scripts/update_manifest.py): users' downloads are verified against it, so a mismatch stops the upload.

    python scripts/publish_weights.py --dry-run build/hub            # write the folders, upload nothing
    python scripts/publish_weights.py --model rfdn --model bsrn      # upload (HF_TOKEN or `hf auth login`)

``--dry-run DIR`` writes ``DIR/<namespace>/<repo>/`` exactly as it would be uploaded (the files, README.md
with the model card, lightsr.json with the manifest records) and leaves the manifest untouched.
HF_ENDPOINT is honoured, so a staging Hub can be used for rehearsal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from lightsr import _hub
from lightsr._api import convert_checkpoint
from lightsr._version import __version__

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = ROOT / "weights_manifest.json"
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "weights"
# The Hub's license identifiers (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSE = {"MIT": "mit", "Apache-2.0": "apache-2.0", "BSD-3-Clause": "bsd-3-clause"}


class PublishError(Exception):
    pass


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def select(manifest: dict[str, Any], models: list[str] | None) -> dict[str, list[dict[str, Any]]]:
    """Records to publish, grouped by Hub repo; refuses unknown or never-re-hosted models."""
    known = manifest["models"]
    for name in models or []:
        if name not in known:
            raise PublishError(f"unknown model {name!r}; known: {', '.join(known)}")
        if all(r["hub"] is None for r in manifest["weights"] if r["model"] == name):
            raise PublishError(f"{name} weights state no license: lightsr never re-hosts them (hub is null)")
    by_repo: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in manifest["weights"]:
        if rec["hub"] is None or (models and rec["model"] not in models):
            continue
        by_repo[rec["hub"]["repo_id"]].append(rec)
    return dict(by_repo)


def _metrics_rows(rec: dict[str, Any]) -> list[str]:
    rows = []
    m = rec.get("metrics") or {}
    for key, label in (("paper", "paper"), ("reference", "official code, re-run"), ("reproduced", "lightsr")):
        values = m.get(key)
        if not values:
            continue
        cells = [
            f"{values[d]['psnr_y']:.2f} / {values[d]['ssim_y']:.4f}" if d in values else "-"
            for d in ("Set5", "Set14", "B100")
        ]
        source = m.get(f"{key}_source", "")
        rows.append(f"| x{rec['scale']} | {label} | " + " | ".join(cells) + f" | {source} |")
    return rows


def model_card(
    repo_id: str,
    records: list[dict[str, Any]],
    manifest: dict[str, Any],
    digests: dict[str, str] | None = None,
) -> str:
    """README.md for a Hub repo: YAML metadata, then model, paper, license, metrics, provenance, usage.

    ``digests`` (file name -> sha256 of the file actually written) wins over the manifest's value.
    """
    digests = digests or {}
    model = records[0]["model"]
    info = manifest["models"][model]
    lic = info["license"]
    hub_license = HUB_LICENSE.get(lic["weights"], "other")
    scales = sorted({r["scale"] for r in records})
    first = min(records, key=lambda r: r["scale"])
    lines = [
        "---",
        f"license: {hub_license}",
        *([f"license_name: {lic['weights']}"] if hub_license == "other" else []),
        "library_name: lightsr",
        "pipeline_tag: image-to-image",
        "tags:",
        "- super-resolution",
        "- image-super-resolution",
        "- lightsr",
        f"- {model}",
        "---",
        "",
        f"# {info['title']}",
        "",
        (
            f"Official weights of **{model}** (x{', x'.join(map(str, scales))}), "
            "converted to safetensors for "
            f"[lightsr](https://pypi.org/project/lightsr/) {__version__}, a library of lightweight "
            "single-image super-resolution networks. The tensors are the upstream ones, renamed to lightsr's "
            "modules (and weight-norm folded where the network uses it); nothing was retrained."
        ),
        "",
        f"**Paper:** {info['paper']}",
        "",
        "## Files",
        "",
        "| file | scale | parameters | input range | sha256 |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: r["scale"]):
        params = f"{r['params']:,}" if r.get("params") else "-"
        lines.append(
            f"| `{r['file']['filename']}` | x{r['scale']} | {params} | 0..{r['input_range']} "
            f"(lightsr feeds 0..1) | `{digests.get(r['file']['filename'], r['file']['sha256'])}` |"
        )
    lines += [
        "",
        "## Metrics",
        "",
        "Y-channel PSNR (dB) / SSIM, borders of `scale` pixels shaved, LR made with MATLAB's bicubic.",
        "",
        "| scale | measured by | Set5 | Set14 | B100 | source |",
        "|---|---|---|---|---|---|",
        *[row for r in sorted(records, key=lambda r: r["scale"]) for row in _metrics_rows(r)],
        "",
        "## License and provenance",
        "",
        f"Weights: **{lic['weights']}**; code: **{lic['code']}**"
        + (f" ({first['license']['note']})" if first["license"].get("note") else "")
        + ".",
        (
            "The weights were trained and released by the paper's authors; cite their paper (above) when you "
            "use them. Each file here was converted from the upstream checkpoint pinned below, after "
            "checking its sha256:"
        ),
        "",
        "| file | upstream checkpoint (pinned commit) | upstream sha256 |",
        "|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: r["scale"]):
        up = r["upstream"]
        lines.append(
            f"| `{r['file']['filename']}` | [{up['repo']}@{up['commit'][:10]}:{up['path']}]({up['url']}) "
            f"| `{up['sha256']}` |"
        )
    lines += [
        "",
        "## Usage",
        "",
        "```bash",
        "pip install lightsr",
        f"lightsr upscale photo.png --model {model} --scale {first['scale']} -o upscaled/",
        "```",
        "",
        "```python",
        "import torch, lightsr",
        "",
        f'up = lightsr.load_model("{model}", scale={first["scale"]})  # downloads, verifies, caches the file',
        "sr = up.upscale(torch.rand(1, 3, 64, 64))  # N x 3 x H x W, values in 0..1",
        "```",
        "",
        (
            "lightsr pins each file by commit and sha256 (see its `weights_manifest.json`); a file that does "
            "not match is refused and removed from the cache."
        ),
        "",
    ]
    return "\n".join(lines)


def build_folder(
    repo_id: str,
    records: list[dict[str, Any]],
    manifest: dict[str, Any],
    weights_dir: Path,
    folder: Path,
    *,
    strict: bool,
) -> None:
    """Write the upload folder for one repo; every file is checked against the manifest's sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    digests: dict[str, str] = {}
    for rec in records:
        up = rec["upstream"]
        src = weights_dir / up["filename"]
        if not src.is_file():
            raise PublishError(f"{src} is missing: the official checkpoints are expected in {weights_dir}")
        if sha256(src) != up["sha256"]:
            raise PublishError(f"{src} is not the pinned upstream file (sha256 differs from the manifest)")
        dst = folder / rec["hub"]["filename"]
        digest = convert_checkpoint(
            src, dst, model=rec["model"], scale=rec["scale"], variant=rec.get("variant")
        )
        digests[rec["hub"]["filename"]] = digest
        pinned = rec["file"].get("sha256")
        if pinned is None:
            msg = (
                f"{rec['model']} x{rec['scale']}: the manifest pins no file.sha256 yet "
                "(run scripts/update_manifest.py first)"
            )
            if strict:
                raise PublishError(msg)
            warnings.warn(msg, stacklevel=2)
        elif digest != pinned:
            raise PublishError(
                f"{rec['model']} x{rec['scale']}: converted sha256 {digest} differs from the "
                f"manifest's {pinned}; users' downloads would be refused. Update the manifest first"
            )
    (folder / "README.md").write_text(model_card(repo_id, records, manifest, digests), encoding="utf-8")
    provenance = {"lightsr_version": __version__, "records": records}
    (folder / "lightsr.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")


def write_revisions(manifest_path: Path, revisions: dict[str, str]) -> None:
    """Set ``hub.revision`` of every record in the given repos, touching nothing else in the file."""
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    for rec in data["weights"]:
        if rec["hub"] is not None and rec["hub"]["repo_id"] in revisions:
            rec["hub"]["revision"] = revisions[rec["hub"]["repo_id"]]
    tmp = manifest_path.with_name(manifest_path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(manifest_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", help="publish only this model (repeatable); default: all")
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS, help="official checkpoints")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument(
        "--dry-run", type=Path, metavar="DIR", help="write the upload folders here; upload nothing"
    )
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--private", action="store_true", help="create new repos as private")
    args = parser.parse_args(argv)

    manifest = json.loads(args.manifest.read_text(encoding="utf-8"))
    try:
        repos = select(manifest, args.model)
        if args.dry_run is not None:
            for repo_id, records in repos.items():
                build_folder(
                    repo_id, records, manifest, args.weights_dir, args.dry_run / repo_id, strict=False
                )
                print(f"{repo_id}: {args.dry_run / repo_id}")
            return 0
        for repo_id, records in repos.items():
            with tempfile.TemporaryDirectory(prefix="lightsr-publish-") as tmp:
                folder = Path(tmp) / "repo"
                build_folder(repo_id, records, manifest, args.weights_dir, folder, strict=True)
                scales = ", ".join(f"x{r['scale']}" for r in records)
                commit = _hub.publish_folder(
                    repo_id,
                    folder,
                    token=args.token,
                    private=args.private,
                    commit_message=f"lightsr {__version__}: {scales} weights and card",
                )
                shutil.rmtree(folder, ignore_errors=True)
            # Written after each repo, so an interrupted run keeps what it already published.
            write_revisions(args.manifest, {repo_id: commit})
            print(f"{repo_id}: published at {commit}")
    except PublishError as exc:
        print(f"publish_weights: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
