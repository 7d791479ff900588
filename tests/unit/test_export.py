"""ONNX and TorchScript exports give the eager model's outputs (within 1e-5) for every registered
architecture, at batch sizes other than the one exported with; tabular preprocessing can be
embedded in the ONNX graph; the manifest describes inputs and outputs."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from _architectures import build
from _helpers import REPO, MiniESMM
from mtlkit import Task
from mtlkit.data import FeatureSchema, TabularPreprocessor
from mtlkit.errors import DataError, IncompatibleComponentsError
from mtlkit.export import example_inputs, export_model, raw_example_columns, relative_error, verify_export
from mtlkit.models.backbones import embedding
from mtlkit.predict import Predictor
from mtlkit.registries import MODELS

ATOL = 1e-5
NOT_TRACEABLE: dict[str, str] = {}
"""Registered models that cannot be exported, with the reason (none so far; docs/deploy.md lists them)."""
SLOW_TORCHSCRIPT = {"mtan"}
"""Models whose TorchScript check takes more than a few seconds (marked slow; ONNX stays in the default run)."""
DOCS = REPO / "docs" / "deploy.md"


def export_cases() -> list[Any]:
    """Every registered model with ONNX (default run) and TorchScript (slow for the slowest ones)."""
    out = []
    for name in MODELS.names():
        out.append(pytest.param(name, "onnx", id=f"{name}-onnx"))
        marks = [pytest.mark.slow] if name in SLOW_TORCHSCRIPT else []
        out.append(pytest.param(name, "torchscript", marks=marks, id=f"{name}-torchscript"))
    return out


def expected(
    model: nn.Module, inputs: Any, tasks: tuple[Task, ...], *, activate: bool = True
) -> dict[str, Tensor]:
    """Eager outputs, with each task's activation written out here (not Task.activate)."""
    model.eval()
    with torch.no_grad():
        out = model(inputs)
    if not activate:
        return out
    kinds = {t.output_key: t for t in tasks}
    res = {}
    for key, v in out.items():
        t = kinds.get(key)
        if t is None or (t.kind == "regression" and t.num_outputs == 1):
            res[key] = v.reshape(-1) if t is not None else v
        elif t.kind == "binary":
            res[key] = (torch.sigmoid(v) if t.logits else v).reshape(-1)
        elif t.kind == "multiclass":
            res[key] = torch.exp(v - torch.logsumexp(v, dim=1, keepdim=True))
        elif t.kind == "multilabel":
            res[key] = torch.sigmoid(v) if t.logits else v
        else:
            res[key] = v
    return res


def feeds(inputs: Any) -> dict[str, np.ndarray]:
    if isinstance(inputs, Tensor):
        return {"x": inputs.numpy()}
    return {k: v.numpy() for k, v in inputs.items()}


def positional(inputs: Any, manifest: dict[str, Any]) -> tuple[Tensor, ...]:
    if isinstance(inputs, Tensor):
        return (inputs,)
    return tuple(inputs[i["name"]] for i in manifest["inputs"])


def run_export(folder: Path, inputs: Any) -> dict[str, np.ndarray]:
    manifest = json.loads((folder / "manifest.json").read_text())
    names = [o["name"] for o in manifest["outputs"]]
    if manifest["format"] == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [i["name"] for i in manifest["inputs"]]
        return dict(zip(names, session.run(names, feeds(inputs))))
    module = torch.jit.load(str(folder / "model.pt"))
    out = module(*positional(inputs, manifest))  # an inference module: no autograd graph
    return {k: out[k].numpy() for k in names}


def assert_matches(got: dict[str, np.ndarray], want: dict[str, Tensor]) -> None:
    assert list(got) == list(want)
    for key, w in want.items():
        assert got[key].shape == tuple(w.shape), key
        np.testing.assert_allclose(got[key], w.numpy(), rtol=0, atol=ATOL, err_msg=key)


def needs(fmt: str) -> None:
    """ONNX tests skip cleanly without the optional dependencies (pip install 'mtlkit[onnx]')."""
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")


def predictor_for(name: str) -> tuple[Predictor, Any]:
    if name in NOT_TRACEABLE:
        pytest.skip(f"{name} cannot be exported: {NOT_TRACEABLE[name]}")
    model, case = build(name)
    spec = case.input_spec
    names = tuple(f"x{i}" for i in range(spec)) if isinstance(spec, int) else None
    return Predictor(model=model, tasks=case.tasks, input_spec=spec, feature_names=names), case


@pytest.mark.parametrize(("name", "fmt"), export_cases())
def test_every_registered_model_exports_to_its_eager_outputs(name: str, fmt: str, tmp_path: Path) -> None:
    needs(fmt)
    predictor, case = predictor_for(name)
    folder = export_model(predictor, tmp_path / name, format=fmt)  # traced with a batch of 3
    assert all(p.requires_grad for p in predictor.model.parameters())  # the model is left as it was
    gen = torch.Generator().manual_seed(7)
    for n in (7, 1):  # the batch axis is dynamic
        x = case.inputs(n, gen)
        assert_matches(run_export(folder, x), expected(predictor.model, x, case.tasks))
    check = verify_export(folder, predictor)
    assert check.passed and check.max_rel <= 1e-5, check.summary()


def test_the_tested_model_list_in_the_docs_is_the_registry() -> None:
    """docs/deploy.md names every registered model the export tests run on, and those that cannot export."""
    text = DOCS.read_text()
    start, end = "<!-- tested-models:start -->", "<!-- tested-models:end -->"
    assert start in text and end in text, f"{DOCS} lost its tested-model markers"
    listed = text.split(start)[1].split(end)[0]
    want = documented_models()
    assert listed.strip() == want.strip(), f"Update {DOCS} between the markers to:\n{want}"


def documented_models() -> str:
    """The text docs/deploy.md holds between its tested-model markers (generated from the registry)."""
    ok = [n for n in MODELS.names() if n not in NOT_TRACEABLE]
    lines = [", ".join(f"`{n}`" for n in ok) + f" ({len(ok)} of {len(MODELS.names())} registered models)"]
    lines += [f"- `{n}` cannot be exported: {why}" for n, why in sorted(NOT_TRACEABLE.items())]
    return "\n".join(lines)


def test_dynamo_exporter_matches_the_eager_model(tmp_path: Path) -> None:
    needs("onnx")
    pytest.importorskip("onnxscript")
    predictor, case = predictor_for("mmoe")
    folder = export_model(predictor, tmp_path, exporter="dynamo")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["exporter"] == "torch.onnx.export (dynamo)" and manifest["opset"] == 18
    x = case.inputs(9, torch.Generator().manual_seed(3))
    assert_matches(run_export(folder, x), expected(predictor.model, x, case.tasks))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_exports_with_the_dynamo_exporter(name: str, tmp_path: Path) -> None:
    needs("onnx")
    pytest.importorskip("onnxscript")
    predictor, case = predictor_for(name)
    folder = export_model(predictor, tmp_path, exporter="dynamo")
    x = case.inputs(6, torch.Generator().manual_seed(3))
    assert_matches(run_export(folder, x), expected(predictor.model, x, case.tasks))


def test_raw_outputs_and_the_manifest(tmp_path: Path) -> None:
    needs("onnx")
    predictor, case = predictor_for("shared_bottom")
    folder = export_model(predictor, tmp_path, activate=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["batch", 10], "columns": [f"x{i}" for i in range(10)]}
    ]
    assert [
        (o["name"], o["task"], o["kind"], o["shape"], o["activation"], o["applied"])
        for o in manifest["outputs"]
    ] == [
        ("ctr", "ctr", "binary", ["batch", 1], "sigmoid", False),
        ("topic", "topic", "multiclass", ["batch", 4], "softmax", False),
        ("value", "value", "regression", ["batch", 1], "none", True),
    ]
    assert manifest["preprocessing"] is None and manifest["exporter"] == "torch.onnx.export (trace)"
    x = case.inputs(5, torch.Generator().manual_seed(1))
    assert_matches(run_export(folder, x), expected(predictor.model, x, case.tasks, activate=False))
    check = verify_export(folder, predictor)
    assert check.passed and check.max_abs <= ATOL and not check.raw_inputs
    assert set(check.outputs) == {"ctr", "topic", "value"}


ESMM_TASKS = (Task(name="ctr", kind="binary", logits=False), Task(name="ctcvr", kind="binary", logits=False))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_outputs_that_are_not_tasks_are_exported_as_given(fmt: str, tmp_path: Path) -> None:
    needs(fmt)
    torch.manual_seed(0)
    model = MiniESMM(6)
    predictor = Predictor(model=model, tasks=ESMM_TASKS, input_spec=6, feature_names=None)
    folder = export_model(predictor, tmp_path, format=fmt)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [(o["name"], o["task"], o["activation"]) for o in manifest["outputs"]] == [
        ("ctr", "ctr", "none"),
        ("cvr", None, "none"),
        ("ctcvr", "ctcvr", "none"),
    ]
    x = torch.randn(11, 6)
    got = run_export(folder, x)
    assert_matches(got, expected(model, x, ESMM_TASKS))
    np.testing.assert_allclose(got["ctcvr"], got["ctr"] * got["cvr"], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- tabular
def raw_columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue", "teal", "?", ""], n).astype(str)
    size = rng.choice(["S", "M", "L", "XL"], n).astype(str)
    age = rng.normal(40, 12, n)
    age[rng.random(n) < 0.1] = np.nan
    income = rng.lognormal(10, 1, n)
    return {"color": color, "size": size, "age": age, "income": income}


@pytest.fixture
def tabular() -> Predictor:
    train = raw_columns(300, 0)
    train["color"][train["color"] == "teal"] = "red"  # "teal" is never seen in training
    pre = TabularPreprocessor(categorical=["color", "size"], numeric=["age", "income"]).fit(train)
    tasks = (
        Task(name="click", kind="binary"),
        Task(name="segment", kind="multiclass", num_classes=3),
        Task(name="spend", kind="regression"),
    )
    schema = pre.schema
    assert isinstance(schema, FeatureSchema)
    torch.manual_seed(0)
    model = MODELS.build(
        "mmoe", input_dim=None, tasks=tasks, num_experts=3, input_layer=lambda: embedding(schema)
    )
    return Predictor(model=model, tasks=tasks, input_spec=schema, preprocessor=pre)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_tabular_export_reads_preprocessed_tensors_and_ships_the_preprocessor(
    tabular: Predictor, fmt: str, tmp_path: Path
) -> None:
    needs(fmt)
    folder = export_model(tabular, tmp_path, format=fmt)
    checks = [m.check_indices for m in tabular.model.modules() if hasattr(m, "check_indices")]
    assert checks == [True]  # switched off in the exported copy only
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [(i["name"], i["dtype"], i["shape"], i["columns"]) for i in manifest["inputs"]] == [
        ("categorical", "int64", ["batch", 2], ["color", "size"]),
        ("numeric", "float32", ["batch", 2], ["age", "income"]),
    ]
    assert manifest["preprocessing"] == {"file": "preprocessor.json", "embedded": False}
    assert json.loads((folder / "preprocessor.json").read_text()) == tabular.preprocessor.state_dict()
    assert tabular.preprocessor is not None
    x = tabular.preprocessor.transform(raw_columns(13, 5))
    assert_matches(run_export(folder, x), expected(tabular.model, x, tabular.tasks))


def test_embedded_preprocessing_reads_raw_columns(tabular: Predictor, tmp_path: Path) -> None:
    needs("onnx")
    ort = pytest.importorskip("onnxruntime")
    folder = export_model(tabular, tmp_path, embed_preprocessing=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [(i["name"], i["dtype"]) for i in manifest["inputs"]] == [
        ("color", "string"),
        ("size", "string"),
        ("age", "float64"),
        ("income", "float64"),
    ]
    assert manifest["preprocessing"] == {"file": "preprocessor.json", "embedded": True}
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o["name"] for o in manifest["outputs"]]
    for n, seed in ((17, 1), (1, 2)):
        raw = raw_columns(n, seed)  # unseen "teal", missing "?"/"" and NaN ages included
        raw["income"][0] = np.inf
        got = dict(zip(names, session.run(names, {k: np.asarray(v) for k, v in raw.items()})))
        assert tabular.preprocessor is not None
        # the graph cannot refuse a value: inf becomes 0, as a missing value does; Python refuses it
        with pytest.raises(DataError, match="numeric column 'income' holds inf in row 1"):
            tabular.preprocessor.transform(raw)
        as_missing = {**raw, "income": np.where(np.isinf(raw["income"]), np.nan, raw["income"])}
        want = expected(tabular.model, tabular.preprocessor.transform(as_missing), tabular.tasks)
        assert_matches(got, want)


@pytest.mark.slow
def test_tabular_export_with_the_dynamo_exporter(tabular: Predictor, tmp_path: Path) -> None:
    needs("onnx")
    folder = export_model(tabular, tmp_path, exporter="dynamo")  # the index check is switched off
    assert tabular.preprocessor is not None
    x = tabular.preprocessor.transform(raw_columns(13, 5))
    assert_matches(run_export(folder, x), expected(tabular.model, x, tabular.tasks))


def test_export_option_errors(tabular: Predictor, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(IncompatibleComponentsError, match="embed_preprocessing needs format='onnx'"):
        export_model(tabular, tmp_path, format="torchscript", embed_preprocessing=True)
    flat, _ = predictor_for("mmoe")
    with pytest.raises(IncompatibleComponentsError, match="embed_preprocessing applies to tabular data"):
        export_model(flat, tmp_path, embed_preprocessing=True)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if onnx were not installed
    with pytest.raises(
        ImportError, match=r"ONNX export needs the onnx package: pip install 'mtlkit\[onnx\]'"
    ):
        export_model(flat, tmp_path)


# ---------------------------------------------------------------------------------------------- --check
def test_relative_error_against_a_direct_computation() -> None:
    want = np.array([[300.0, -2.0], [0.0, 150.0]])
    got = want + np.array([[3e-3, 0.0], [-1.5e-3, 0.0]])
    abs_err, rel = relative_error(got, want)
    assert abs_err == pytest.approx(3e-3, rel=1e-9)
    # the output's scale is 300: 3e-3 / max(300.003, 300, 300) and 1.5e-3 / max(1.5e-3, 0, 300)
    assert rel == pytest.approx(3e-3 / 300.003, rel=1e-9)
    assert relative_error(want, want.copy()) == (0.0, 0.0)
    special = np.array([np.inf, np.nan, 1.0])
    assert relative_error(special, special.copy()) == (0.0, 0.0)  # equal non-finite values agree
    assert relative_error(np.array([np.inf, 1.0]), np.array([1.0, 1.0]))[1] == math.inf
    assert relative_error(np.array([np.nan]), np.array([1.0]))[1] == math.inf
    assert relative_error(np.zeros(2), np.zeros(3))[1] == math.inf  # shapes differ


class Scaled(nn.Module):
    """Outputs of about ``scale`` in size (a two-output regression) next to a probability."""

    task_names = ("big", "p")

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Linear(6, 16)
        self.big = nn.Linear(16, 2)
        self.p = nn.Linear(16, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = torch.tanh(self.body(x))
        return {"big": self.scale * (1.5 + torch.tanh(self.big(h))), "p": self.p(h)}


SCALED_TASKS = (Task(name="big", kind="regression", num_outputs=2), Task(name="p", kind="binary"))


@pytest.mark.parametrize("scale", [1.0, 300.0, 1e6])
def test_check_tolerance_is_relative_to_the_outputs_scale(scale: float, tmp_path: Path) -> None:
    needs("onnx")
    torch.manual_seed(0)
    predictor = Predictor(model=Scaled(scale), tasks=SCALED_TASKS, input_spec=6, feature_names=None)
    folder = export_model(predictor, tmp_path)
    check = verify_export(folder, predictor)
    assert check.passed, check.summary()
    assert check.outputs["big"][1] == 1e-5 and check.rtol == 1e-5  # float32 outputs
    # independently: the same rows through ONNX Runtime and the eager model
    x = example_inputs(predictor, 7, seed=1)[0]
    got, want = run_export(folder, x)["big"], expected(predictor.model, x, SCALED_TASKS)["big"].numpy()
    diff = np.abs(got.astype(np.float64) - want)
    assert check.outputs["big"][0] <= diff.max() / np.abs(want).max() + 1e-12
    assert check.max_abs >= diff.max()
    assert check.max_abs <= 1e-5 * 2.5 * scale  # the outputs lie in [0.5, 2.5] * scale

    # a real difference is caught at every scale: shift the eager model by 1e-3 of its scale
    with torch.no_grad():
        predictor.model.big.bias += 2e-3  # tanh' <= 1: moves "big" by up to 2e-3 * scale
    bad = verify_export(folder, predictor)
    assert not bad.passed and bad.max_rel > 1e-5 * 10
    assert bad.outputs["p"][0] <= 1e-5  # the other output still agrees


@pytest.fixture
def scaled_run(tmp_path: Path, monkeypatch) -> Predictor:
    """`mtlkit export` on a model built here (load_predictor replaced: no training needed)."""
    torch.manual_seed(0)
    predictor = Predictor(
        model=Scaled(300.0), tasks=SCALED_TASKS, input_spec=6, feature_names=None, run_dir=tmp_path
    )
    monkeypatch.setattr("mtlkit.predict.load_predictor", lambda run_dir: predictor)
    return predictor


def test_cli_check_prints_the_relative_error_and_fails_on_a_real_difference(
    scaled_run: Predictor, tmp_path: Path, monkeypatch, capsys
) -> None:
    needs("onnx")
    from mtlkit.cli.main import main

    assert main(["export", str(tmp_path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "max |export - eager| on 7 random rows:" in out
    assert "max relative error" in out and "(tolerance 1e-05)" in out

    def faulty_export(predictor: Predictor, out: Any, **kw: Any) -> Path:  # an exporter that is off by 1e-3
        folder = export_model(predictor, out, **kw)
        with torch.no_grad():
            predictor.model.big.bias += 1e-3
        return folder

    monkeypatch.setattr("mtlkit.export.export_model", faulty_export)
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "faulty"), "--check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the export differs from the eager model: max |export - eager|")
    assert "Traceback" not in err


def test_check_feeds_raw_columns_through_the_embedded_preprocessing(
    tabular: Predictor, tmp_path: Path
) -> None:
    needs("onnx")
    assert tabular.preprocessor is not None
    folder = export_model(tabular, tmp_path, embed_preprocessing=True)
    check = verify_export(folder, tabular, n=9)
    assert check.raw_inputs and check.rows == 9 and check.passed, check.summary()
    assert "raw rows through the embedded preprocessing" in check.summary()
    raw = raw_example_columns(tabular.preprocessor, 9, seed=1)
    vocab = set(tabular.preprocessor.vocabularies["color"])
    assert {"", "?"} <= set(raw["color"]) and set(raw["color"]) - vocab - {"", "?"}  # unseen value
    # a missing value; no inf, which Python preprocessing refuses (the graph maps it to missing)
    assert np.isnan(raw["age"]).any() and not np.isinf(raw["age"]).any()
    # the check really goes through the graph's preprocessing: another preprocessor fails it
    state = tabular.preprocessor.state_dict()
    mean, std = state["stats"]["income"]
    state["stats"]["income"] = [mean + std, std]
    shifted = dataclasses.replace(tabular, preprocessor=TabularPreprocessor.from_state_dict(state))
    assert not verify_export(folder, shifted, n=9).passed
    with pytest.raises(DataError, match="reads raw columns"):
        verify_export(folder, dataclasses.replace(tabular, preprocessor=None))


def test_cli_check_with_embedded_preprocessing(
    tabular: Predictor, tmp_path: Path, monkeypatch, capsys
) -> None:
    needs("onnx")
    from mtlkit.cli.main import main

    monkeypatch.setattr(
        "mtlkit.predict.load_predictor", lambda run_dir: dataclasses.replace(tabular, run_dir=tmp_path)
    )
    assert main(["export", str(tmp_path), "--embed-preprocessing", "--check"]) == 0
    out = capsys.readouterr().out
    assert "on 7 random raw rows through the embedded preprocessing" in out and "max relative error" in out


class PythonCall(torch.autograd.Function):
    """A Python function in forward: TorchScript cannot save it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x * x

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        return g


class Untraceable(nn.Module):
    task_names = ("y",)

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"y": PythonCall.apply(self.lin(x))}


def test_a_model_that_cannot_be_exported_gets_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    predictor = Predictor(
        model=Untraceable(), tasks=(Task(name="y", kind="regression"),), input_spec=3, run_dir=tmp_path
    )
    with pytest.raises(IncompatibleComponentsError) as err:
        export_model(predictor, tmp_path / "ts", format="torchscript")
    msg = str(err.value)
    assert msg.startswith("Untraceable cannot be exported to torchscript with torch.jit.trace: RuntimeError:")
    assert "'PythonCall'" in msg and "try --format onnx" in msg
    from mtlkit.cli.main import main

    monkeypatch.setattr("mtlkit.predict.load_predictor", lambda run_dir: predictor)
    assert main(["export", str(tmp_path), "--format", "torchscript"]) == 1
    err_text = capsys.readouterr().err
    assert err_text.startswith("error: Untraceable cannot be exported") and "Traceback" not in err_text
