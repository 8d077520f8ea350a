"""lightsr.export and `lightsr export`: the exported graph, run by ONNX Runtime / OpenVINO, is the module.

Parity is checked on MATLAB-bicubic Set5 LR crops of sizes other than the traced one (32 x 32 or the
model's minimum), batched, so a graph with a size baked in fails. Random noise is not used as input: PAN
and BSRN x2 blow up on it (outputs ~1e10), where any rounding difference is "large".
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lightsr
from lightsr._zoo import describe, records
from lightsr.errors import DeviceError, InputError, LightSRError, OutputError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4
# Two Set5 images, cropped (LR pixels) so 26 exports stay inside the slow test's budget; two sizes that
# differ from each other and from the traced 32 x 32, in one batch of two (same size) and one single.
CROPS = {"baby.png": (40, 44), "bird.png": (36, 52)}


def _weights(weights_dir: Path, name: str, scale: int) -> str:
    return str(weights_dir / describe(name, scale).record["upstream"]["filename"])


def _lr_crops(bench_dir: Path, scale: int, multiple: int, min_size: int) -> list[torch.Tensor]:
    from lightsr import metrics
    from lightsr._evaluate import read_hr

    out = []
    for file, (h, w) in CROPS.items():
        hr = metrics.modcrop(read_hr(bench_dir / "Set5" / "HR" / file), scale)
        lr = metrics.imresize_matlab(hr, 1 / scale)
        h, w = (max(min_size, -(-v // multiple) * multiple) for v in (h, w))
        t = torch.from_numpy(np.ascontiguousarray(lr[:h, :w].transpose(2, 0, 1))).float().div(255)
        out.append(t.unsqueeze(0))
    return out


def _check_parity(module: torch.nn.Module, run, crops: list[torch.Tensor]) -> float:
    worst = 0.0
    for x in (torch.cat([crops[0], crops[0].flip(-1)]), crops[1]):
        with torch.no_grad():
            ref = module(x).numpy()
        got = run(x.numpy())
        assert got.shape == ref.shape
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def _ort_runner(path: Path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda a: session.run(None, {"input": a})[0]


def _expected_metadata(name: str, scale: int) -> dict[str, str]:
    rec = describe(name, scale).record
    traits = describe(name, scale).traits
    return {
        "lightsr.model": name,
        "lightsr.scale": str(scale),
        "lightsr.input_range": "0..1",
        "lightsr.size_multiple": str(traits.size_multiple),
        "lightsr.min_size": str(traits.min_size),
        "lightsr.weights_sha256": rec["file"]["sha256"],
    }


@pytest.fixture(scope="module")
def rtc(weights_dir: Path) -> lightsr.Upscaler:
    return lightsr.load_model(
        "imdn-rtc",
        2,
        weights=_weights(weights_dir, "imdn-rtc", 2),
        device="cpu",
        precision="fp32",
        backend="torch",
    )


def test_onnx_export_matches_the_module_on_other_shapes(rtc, bench_dir, tmp_path):
    path = lightsr.export(rtc, tmp_path / "rtc.onnx")
    assert path == tmp_path / "rtc.onnx" and sorted(os.listdir(tmp_path)) == ["rtc.onnx"]
    crops = _lr_crops(bench_dir, 2, 1, 1)
    assert _check_parity(rtc.module, _ort_runner(path), crops) <= TOL
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert _expected_metadata("imdn-rtc", 2).items() <= props.items()
    assert props["lightsr.license"]  # upstream states none: said so, not left empty
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True]


def test_export_by_name_records_the_weights_file(weights_dir, tmp_path):
    src = _weights(weights_dir, "imdn-rtc", 2)
    lightsr.export("imdn-rtc", tmp_path / "m.onnx", scale=2, weights=src)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    import hashlib

    assert props["lightsr.weights_file_sha256"] == hashlib.sha256(Path(src).read_bytes()).hexdigest()


def test_fixed_shape_export(rtc, bench_dir, tmp_path):
    x = _lr_crops(bench_dir, 2, 1, 1)[1]
    lightsr.export(rtc, tmp_path / "f.onnx", dynamic=False, input_size=tuple(x.shape[-2:]))
    dims = onnx.load(str(tmp_path / "f.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, *x.shape[-2:]]
    with torch.no_grad():
        ref = rtc.module(x).numpy()
    assert np.abs(_ort_runner(tmp_path / "f.onnx")(x.numpy()) - ref).max() <= TOL


def test_openvino_ir_matches_and_carries_rt_info(rtc, bench_dir, tmp_path):
    ov = pytest.importorskip("openvino")
    path = lightsr.export(rtc, tmp_path / "rtc.xml", format="openvino")
    assert sorted(os.listdir(tmp_path)) == ["rtc.bin", "rtc.xml"]
    core = ov.Core()
    ir = core.read_model(str(path))
    for key, value in _expected_metadata("imdn-rtc", 2).items():
        assert ir.get_rt_info(["lightsr", key.removeprefix("lightsr.")]).astype(str) == value

    def run(a: np.ndarray) -> np.ndarray:
        m = core.read_model(str(path))
        m.reshape({"input": list(a.shape)})
        return core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(a)[0]

    assert _check_parity(rtc.module, run, _lr_crops(bench_dir, 2, 1, 1)) <= TOL


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"format": "tflite"}, InputError, "unknown export format 'tflite'; use 'onnx' or 'openvino'"),
        ({"precision": "bf16"}, InputError, "use 'fp32'"),
        ({"input_size": (0, 4)}, InputError, "input_size must be"),
    ],
)
def test_bad_options(rtc, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        lightsr.export(rtc, tmp_path / "m.onnx", **kwargs)
    assert os.listdir(tmp_path) == []


def test_unwritable_paths_are_output_errors(rtc, tmp_path):
    with pytest.raises(OutputError, match="does not exist; create it first"):
        lightsr.export(rtc, tmp_path / "missing" / "m.onnx")
    with pytest.raises(OutputError, match="is a folder"):
        lightsr.export(rtc, tmp_path)
    with pytest.raises(OutputError, match=r"\.xml"):
        lightsr.export(rtc, tmp_path / "m.onnx", format="openvino")
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_no_partial_file(rtc, tmp_path, monkeypatch):
    from lightsr import _export

    def half_written(model, tmp: Path):
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_export, "_save_onnx", half_written)
    (tmp_path / "old.onnx").write_bytes(b"previous")
    with pytest.raises(OutputError, match="No space left on device"):
        lightsr.export(rtc, tmp_path / "old.onnx")
    assert os.listdir(tmp_path) == ["old.onnx"] and (tmp_path / "old.onnx").read_bytes() == b"previous"


def test_missing_onnx_names_the_extra(rtc, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(DeviceError, match=r'pip install "lightsr\[onnxruntime\]"'):
        lightsr.export(rtc, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_base_import_loads_no_engine():
    engines = "('onnx', 'onnxruntime', 'openvino')"
    code = f"import lightsr, sys; print(sorted(m for m in {engines} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_export(weights_dir, tmp_path):
    from test_cli import run_cli

    out = tmp_path / "rtc.onnx"
    done = run_cli(
        "export",
        "imdn-rtc",
        "--scale",
        "2",
        "-o",
        str(out),
        "--weights",
        _weights(weights_dir, "imdn-rtc", 2),
    )
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["lightsr.model"] == "imdn-rtc" and props["lightsr.scale"] == "2"
    bad = run_cli(
        "export",
        "imdn-rtc",
        "--scale",
        "2",
        "-o",
        str(tmp_path / "no" / "m.onnx"),
        "--weights",
        _weights(weights_dir, "imdn-rtc", 2),
    )
    assert bad.returncode != 0 and "does not exist; create it first" in bad.stderr
    assert "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------------------- every record
def _default_records() -> list:
    return [
        pytest.param(r["model"], r["scale"], id=f"{r['model']}-{r['scale']}")
        for r in records()
        if r.get("default") and r["arch_config"] is not None
    ]


# SAFMN's adaptive max pooling to (H // 2**k, W // 2**k) has no ONNX form with free height and width (the
# TorchScript exporter refuses it, the dynamo exporter fixes the size): it exports with dynamic=False only,
# at a size whose sides 16 divides (the pooling windows are then fixed).
FIXED_SHAPE_ONLY = {("safmn-ntire23", 4)}


@pytest.mark.slow
def test_every_record_exports_with_parity(weights_dir, bench_dir, tmp_path):
    """All default records in one test (26 exports, ~80-130 s on one thread, FDIWN's three ~50 s of it)."""
    failures, times = [], {}
    for param in _default_records():
        name, scale = param.values
        up = lightsr.load_model(
            name,
            scale,
            weights=_weights(weights_dir, name, scale),
            device="cpu",
            precision="fp32",
            backend="torch",
        )
        traits = up.descriptor.traits
        crops = _lr_crops(bench_dir, scale, traits.size_multiple, traits.min_size)
        path = tmp_path / f"{name}_x{scale}.onnx"
        start = time.perf_counter()
        if (name, scale) in FIXED_SHAPE_ONLY:
            with pytest.raises(LightSRError, match="dynamic=False"):
                lightsr.export(up, path)
            x = crops[1][..., :32, :48]  # static pooling windows: sides that 16 divides
            lightsr.export(up, path, dynamic=False, input_size=(32, 48))
            with torch.no_grad():
                ref = up.module(x).numpy()
            worst = float(np.abs(_ort_runner(path)(x.numpy()) - ref).max())
        else:
            lightsr.export(up, path)
            worst = _check_parity(up.module, _ort_runner(path), crops)
        times[f"{name} x{scale}"] = round(time.perf_counter() - start, 2)
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        if not _expected_metadata(name, scale).items() <= props.items():
            failures.append(f"{name} x{scale}: metadata {props}")
        if not worst <= TOL:
            failures.append(f"{name} x{scale}: max abs difference {worst:.2e} > {TOL}")
        path.unlink()
    print("export + check seconds:", times)
    assert not failures, "\n".join(failures)
