"""Export a trained multi-task model to ONNX or TorchScript, with its preprocessing and a manifest.

:func:`export_run` loads a run directory's model as :func:`mtlkit.predict.load_predictor` does
(the best weights) and writes a folder::

    model.onnx | model.pt     the model: named inputs, one named output per model output
    manifest.json             inputs (names, dtypes, shapes, columns), outputs (task, kind,
                              shape, activation and whether it is applied), the preprocessing
    preprocessor.json         tabular data: the fitted vocabularies, means and stds

The model's dict output is flattened to one output per key (auxiliary losses dropped), in the
order of the model's dict; the batch dimension is dynamic. Inputs are the tensors the model
reads: ``x`` for flat features and other tensors, ``categorical`` (``(N, C)`` int64 indices)
and ``numeric`` (``(N, D)`` float32, standardised) for tabular data. With ``activate=True``
(default) each task's activation is part of the graph (probabilities for classification), as in
``mtlkit predict``; ``activate=False`` exports the raw outputs (logits) and the manifest says
which activation to apply.

``embed_preprocessing=True`` (ONNX, tabular data) also puts the fitted preprocessing in the
graph, so the model reads raw columns: one ``(N,)`` string input per categorical column (mapped
to indices with the ``ai.onnx.ml`` ``LabelEncoder``; unseen and missing values go to index 0)
and one ``(N,)`` float64 input per numeric column (standardised in float64 as
:class:`~mtlkit.data.preprocessing.TabularPreprocessor` does; NaN/inf become 0, the training
mean). Strings must be passed as the CSV holds them after stripping surrounding blanks.

ONNX export uses ``torch.onnx.export``. By default with its TorchScript-tracing exporter
(``exporter="trace"``, opset 17): it exports every registered model, including input checks that
read tensor values, and takes a fraction of a second; PyTorch marks it deprecated (since 2.9 its
default is the ``torch.export``-based exporter). ``exporter="dynamo"`` selects that one (opset
18, needs onnxscript, 10-30x slower; it cannot export code that branches on tensor values). Both
are tested on every registered model. Input checks that read tensor values (the embedding front
end's index range check) are switched off while exporting, since a graph cannot raise; ONNX
Runtime itself rejects out-of-range indices in its ``Gather``.

TorchScript export traces the model (``torch.jit.trace``); the traced module returns a dict
``{output name: tensor}``. PyTorch 2.13 marks TorchScript deprecated in favour of
``torch.export``; the format is kept for serving stacks that still load it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from mtlkit.data.preprocessing import TabularPreprocessor
from mtlkit.data.schema import CATEGORICAL, NUMERIC, FeatureSchema
from mtlkit.errors import DataError, IncompatibleComponentsError, ShapeError
from mtlkit.jsonio import dumps
from mtlkit.predict import PREPROCESSOR_FILE, Predictor, load_predictor
from mtlkit.tasks import Task, TaskKind

__all__ = [
    "RTOL",
    "ExportCheck",
    "ExportFormat",
    "ExportWrapper",
    "Exporter",
    "activation_of",
    "example_inputs",
    "export_model",
    "export_run",
    "onnx_inputs",
    "raw_example_columns",
    "relative_error",
    "verify_export",
]

ExportFormat = Literal["onnx", "torchscript"]
MANIFEST_FILE = "manifest.json"
_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
Exporter = Literal["trace", "dynamo"]
_OPSETS = {"trace": 17, "dynamo": 18}


def _require(module: str, what: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"{what} needs the {module} package: pip install 'mtlkit[onnx]'") from None


def activation_of(task: Task | None) -> str:
    """The activation that turns a model output into the prediction: sigmoid, softmax, none, or
    for regression the inverse link and target transform (e.g. ``exp``, ``expm1``, ``x * std + mean``)."""
    if task is None:
        return "none"
    if task.kind in (TaskKind.BINARY, TaskKind.MULTILABEL):
        return "sigmoid" if task.logits else "none"
    if task.kind is TaskKind.MULTICLASS:
        return "softmax"
    steps = ["exp"] if task.link == "log" else []  # poisson/tweedie: the output is the log-mean
    transform = task.transform
    if transform is not None and not isinstance(transform, (str, dict)):
        steps.append("expm1" if transform.name == "log1p" else f"x * {transform.std!r} + {transform.mean!r}")
    return " then ".join(steps) or "none"


class ExportWrapper(nn.Module):
    """Positional tensor inputs -> a tuple (or dict) of the model's outputs, activated or raw."""

    def __init__(
        self,
        model: nn.Module,
        input_names: Sequence[str],
        output_keys: Sequence[str],
        tasks: Sequence[Task],
        *,
        activate: bool,
        as_dict: bool,
    ) -> None:
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        self.output_keys = tuple(output_keys)
        self.tasks = {t.output_key: t for t in tasks}
        self.activate, self.as_dict = activate, as_dict

    def forward(self, *args: Tensor) -> Any:
        inputs: Any = args[0] if self.input_names == ("x",) else dict(zip(self.input_names, args))
        preds = self.model(inputs)
        outs = []
        for key in self.output_keys:
            value = preds[key]
            task = self.tasks.get(key)
            if self.activate and task is not None:
                value = task.activate(value.float())
            outs.append(value)
        return dict(zip(self.output_keys, outs)) if self.as_dict else tuple(outs)


def _input_layout(p: Predictor) -> list[dict[str, Any]]:
    spec = p.input_spec
    if isinstance(spec, FeatureSchema):
        out = []
        if spec.num_categorical:
            out.append(
                {
                    "name": CATEGORICAL,
                    "dtype": "int64",
                    "shape": ["batch", spec.num_categorical],
                    "columns": list(spec.categorical),
                    "cardinalities": list(spec.cardinalities),
                }
            )
        for x in spec.lists:  # list columns: (N, L) int64 indices, -1 padding
            out.append(
                {
                    "name": x.key,
                    "dtype": "int64",
                    "shape": ["batch", x.length],
                    "columns": [x.name],
                    "cardinalities": [x.cardinality],
                    "padding": -1,
                    "pooling": x.pooling,
                }
            )
        if spec.num_numeric:
            out.append(
                {
                    "name": NUMERIC,
                    "dtype": "float32",
                    "shape": ["batch", spec.num_numeric],
                    "columns": list(spec.numeric),
                }
            )
        return out
    if isinstance(spec, int):
        return [
            {
                "name": "x",
                "dtype": "float32",
                "shape": ["batch", spec],
                "columns": list(p.feature_names or ()),
            }
        ]
    if isinstance(spec, tuple):
        return [{"name": "x", "dtype": "float32", "shape": ["batch", *spec]}]
    raise ShapeError(f"Cannot export a model whose input spec is unknown ({spec!r}).")


def example_inputs(p: Predictor, n: int, *, seed: int = 0) -> tuple[Tensor, ...]:
    """Random model-ready inputs of batch size ``n`` (valid category indices, normal numbers)."""
    g = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    for spec in _input_layout(p):
        if spec["name"] == CATEGORICAL:
            cards = torch.tensor(spec["cardinalities"])
            out.append((torch.rand(n, len(cards), generator=g) * cards).long().clamp_max(cards - 1))
        elif "padding" in spec:  # a list column: values in 0..card-1, some -1 padding (a row of only padding)
            card, length = spec["cardinalities"][0], spec["shape"][1]
            codes = (torch.rand(n, length, generator=g) * card).long().clamp_max(card - 1)
            pad = torch.rand(n, length, generator=g) < 0.3
            pad[0] = True
            out.append(codes.masked_fill(pad, -1))
        else:
            out.append(torch.randn(n, *spec["shape"][1:], generator=g))
    return tuple(out)


def onnx_inputs(manifest: Mapping[str, Any], inputs: Sequence[Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """``{input name: array}`` for ``onnxruntime.InferenceSession.run`` from model-ready tensors."""
    names = [i["name"] for i in manifest["inputs"]]
    return {k: (v.numpy() if isinstance(v, Tensor) else np.asarray(v)) for k, v in zip(names, inputs)}


def _inference_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode, without gradients and without checks that read tensor values.

    A graph cannot raise, so the embedding front end's index range check (``check_indices``) is
    switched off; parameters do not require gradients, so exported modules build no autograd graph.
    The caller's model is left untouched.
    """
    copy_ = copy.deepcopy(model).cpu().eval()
    for m in copy_.modules():
        if getattr(m, "check_indices", None) is True:
            m.check_indices = False
    for p in copy_.parameters():
        p.requires_grad_(False)
    return copy_


def export_model(
    predictor: Predictor,
    out: str | os.PathLike[str],
    *,
    format: ExportFormat = "onnx",
    activate: bool = True,
    embed_preprocessing: bool = False,
    exporter: Exporter = "trace",
    opset: int | None = None,
) -> Path:
    """Export a loaded model (see :func:`export_run`) into the folder ``out``; returns the folder."""
    if format not in _FILES:
        raise ValueError(f"export format must be 'onnx' or 'torchscript'; got {format!r}.")
    if exporter not in _OPSETS:
        raise ValueError(f"exporter must be 'trace' or 'dynamo'; got {exporter!r}.")
    if embed_preprocessing and format != "onnx":
        raise IncompatibleComponentsError(
            "embed_preprocessing needs format='onnx' (TorchScript graphs cannot map strings)."
        )
    if embed_preprocessing and predictor.preprocessor is None:
        raise IncompatibleComponentsError(
            "embed_preprocessing applies to tabular data with a fitted preprocessor; this model reads "
            f"{_input_layout(predictor)[0]['shape']} tensors directly."
        )
    if embed_preprocessing and not predictor.preprocessor.plain:
        raise IncompatibleComponentsError(
            "embed_preprocessing supports plain vocabulary and standardised columns only; this model's features "
            "use hashing, shared tables, lists, log1p or bucketizing. Export without embed_preprocessing and apply "
            "preprocessor.json (TabularPreprocessor.from_state_dict) outside the graph."
        )
    if format == "onnx":
        _require("onnx", "ONNX export")
        if exporter == "dynamo":
            _require("onnxscript", "ONNX export with the torch.export-based exporter")
    model = _inference_copy(predictor.model)
    layout = _input_layout(predictor)
    input_names = [i["name"] for i in layout]
    args = example_inputs(predictor, 3)
    with torch.no_grad():
        preds = model(args[0] if input_names == ["x"] else dict(zip(input_names, args)))
    keys = list(preds)
    wrapper = ExportWrapper(
        model, input_names, keys, predictor.tasks, activate=activate, as_dict=format == "torchscript"
    ).eval()
    with torch.no_grad():
        example_out = wrapper(*args)
    values = list(example_out.values()) if isinstance(example_out, dict) else list(example_out)
    by_output = {t.output_key: t for t in predictor.tasks}
    outputs = [
        {
            "name": k,
            "task": by_output[k].name if k in by_output else None,
            "kind": str(by_output[k].kind) if k in by_output else None,
            "shape": ["batch", *v.shape[1:]],
            "dtype": str(v.dtype).removeprefix("torch."),
            "activation": activation_of(by_output.get(k)),
            "applied": bool(activate) or activation_of(by_output.get(k)) == "none",
        }
        for k, v in zip(keys, values)
    ]
    clash = sorted(set(input_names) & set(keys))
    if clash:
        raise ShapeError(f"Model outputs {clash} have the names of inputs; ONNX needs distinct names.")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _FILES[format]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape checks become constants
        # chosen on purpose (see the module doc); the docs say what PyTorch deprecates
        warnings.filterwarnings(
            "ignore", message=".*(legacy TorchScript-based ONNX|torch.jit)", category=DeprecationWarning
        )
        try:
            if format == "torchscript":
                torch.jit.trace(wrapper, args, strict=False).save(str(path))
            else:
                _export_onnx(
                    wrapper,
                    args,
                    path,
                    input_names,
                    keys,
                    exporter=exporter,
                    opset=opset or _OPSETS[exporter],
                )
        except Exception as exc:  # the exporters raise many types; one clear message names the way out
            raise _export_failed(predictor.model, format, exporter, exc) from exc
    manifest: dict[str, Any] = {
        "format": format,
        "file": path.name,
        "exporter": f"torch.onnx.export ({exporter})" if format == "onnx" else "torch.jit.trace",
        "mtlkit_version": _version(),
        "torch_version": torch.__version__,
        "run_dir": str(predictor.run_dir) if predictor.run_dir else None,
        "tasks": [{"name": t.name, "kind": str(t.kind), "output": t.output_key} for t in predictor.tasks],
        "inputs": layout,
        "outputs": outputs,
        "preprocessing": None,
    }
    if predictor.preprocessor is not None:
        (folder / PREPROCESSOR_FILE).write_text(dumps(predictor.preprocessor.state_dict()))
        manifest["preprocessing"] = {"file": PREPROCESSOR_FILE, "embedded": bool(embed_preprocessing)}
    if format == "onnx":
        _restore_unused_inputs(path, layout)
    if embed_preprocessing:
        assert predictor.preprocessor is not None
        manifest["inputs"] = _embed_preprocessing(path, predictor.preprocessor, keys)
    if format == "onnx":
        import onnx

        manifest["opset"] = next(
            o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")
        )
    (folder / MANIFEST_FILE).write_text(dumps(manifest))
    return folder


def _export_failed(
    model: nn.Module, format: str, exporter: str, exc: Exception
) -> IncompatibleComponentsError:
    how = "torch.jit.trace" if format == "torchscript" else f"torch.onnx.export ({exporter} exporter)"
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    if format == "torchscript":
        other = "try --format onnx"
    elif exporter == "dynamo":
        other = "try --exporter trace (the default), which exports code that branches on tensor values"
    else:
        other = "try --exporter dynamo or --format torchscript"
    return IncompatibleComponentsError(
        f"{type(model).__name__} cannot be exported to {format} with {how}: {type(exc).__name__}: {first}. "
        f"Either {other}, or make the model's forward traceable (tensor operations only, no Python "
        "values computed from tensors); MTLKIT_DEBUG=1 shows the exporter's traceback."
    )


def _version() -> str:
    from mtlkit import __version__

    return __version__


def _export_onnx(
    wrapper: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    *,
    exporter: str,
    opset: int,
) -> None:
    if exporter == "dynamo":
        batch = torch.export.Dim("batch")
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=(tuple({0: batch} for _ in args),),  # forward(*args): one varargs entry
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    else:
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in [*input_names, *output_names]},
            opset_version=opset,
            dynamo=False,
        )


def _restore_unused_inputs(path: Path, layout: Sequence[Mapping[str, Any]]) -> None:
    """Put back the inputs the exporter pruned because the eval graph reads none of their values
    (e.g. a bias tower's position column, left out at serving), so the graph's inputs are always
    the manifest's, in its order."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    present = {i.name: i for i in graph.input}
    if all(spec["name"] in present for spec in layout):
        return
    types = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT}
    inputs = [
        present.get(spec["name"])
        or helper.make_tensor_value_info(spec["name"], types[spec["dtype"]], list(spec["shape"]))
        for spec in layout
    ]
    others = [i for i in graph.input if i.name not in {spec["name"] for spec in layout}]
    del graph.input[:]
    graph.input.extend([*inputs, *others])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _embed_preprocessing(
    path: Path, pre: TabularPreprocessor, output_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Rewrite the ONNX graph at ``path`` to read raw columns (see the module doc); returns the new inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not pre.plain:
        raise ShapeError(
            "embed_preprocessing supports plain vocabulary and standardised columns only; this model's features "
            "use hashing, shared tables, lists, log1p or bucketizing. Export without embed_preprocessing and apply "
            "preprocessor.json (TabularPreprocessor.from_state_dict) outside the graph."
        )
    vocabularies, stats = pre.vocabularies or {}, pre.stats or {}
    columns = [*pre.categorical, *pre.numeric]
    taken = sorted(set(columns) & {CATEGORICAL, NUMERIC, *output_names})
    if taken:
        raise ShapeError(
            f"Cannot embed the preprocessing: column(s) {taken} have the names of model inputs or outputs. "
            "Export without embed_preprocessing and apply preprocessor.json outside the graph."
        )
    model = onnx.load(str(path))
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        raise ShapeError(f"embed_preprocessing needs an ONNX opset >= 13; the export has {opset}.")
    nodes: list[Any] = []
    inits = [numpy_helper.from_array(np.array([1], dtype=np.int64), "mtlkit_pre_axis1")]
    new_inputs: list[Any] = []
    layout: list[dict[str, Any]] = []
    if pre.categorical:
        cols = []
        for j, name in enumerate(pre.categorical):
            vocab = vocabularies[name]
            keys, vals = (vocab, list(range(1, len(vocab) + 1))) if vocab else ([""], [0])
            new_inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, ["batch"]))
            nodes.append(
                helper.make_node(
                    "LabelEncoder",
                    [name],
                    [f"mtlkit_pre_cat{j}"],
                    domain="ai.onnx.ml",
                    keys_strings=keys,
                    values_int64s=vals,
                    default_int64=0,
                )
            )
            nodes.append(
                helper.make_node(
                    "Unsqueeze", [f"mtlkit_pre_cat{j}", "mtlkit_pre_axis1"], [f"mtlkit_pre_catcol{j}"]
                )
            )
            cols.append(f"mtlkit_pre_catcol{j}")
            layout.append({"name": name, "dtype": "string", "shape": ["batch"], "column": "categorical"})
        nodes.append(helper.make_node("Concat", cols, [CATEGORICAL], axis=1))
    if pre.numeric:
        cols = []
        for j, name in enumerate(pre.numeric):
            new_inputs.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, ["batch"]))
            nodes.append(helper.make_node("Unsqueeze", [name, "mtlkit_pre_axis1"], [f"mtlkit_pre_numcol{j}"]))
            cols.append(f"mtlkit_pre_numcol{j}")
            layout.append({"name": name, "dtype": "float64", "shape": ["batch"], "column": "numeric"})
        mean = np.array([stats[c][0] for c in pre.numeric], dtype=np.float64)
        std = np.array([stats[c][1] for c in pre.numeric], dtype=np.float64)
        inits += [
            numpy_helper.from_array(mean, "mtlkit_pre_mean"),
            numpy_helper.from_array(std, "mtlkit_pre_std"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float64), "mtlkit_pre_zero"),
        ]
        nodes += [
            helper.make_node("Concat", cols, ["mtlkit_pre_raw"], axis=1),
            helper.make_node("Sub", ["mtlkit_pre_raw", "mtlkit_pre_mean"], ["mtlkit_pre_centred"]),
            helper.make_node("Div", ["mtlkit_pre_centred", "mtlkit_pre_std"], ["mtlkit_pre_z"]),
            helper.make_node("IsNaN", ["mtlkit_pre_z"], ["mtlkit_pre_nan"]),
            helper.make_node("IsInf", ["mtlkit_pre_z"], ["mtlkit_pre_inf"]),
            helper.make_node("Or", ["mtlkit_pre_nan", "mtlkit_pre_inf"], ["mtlkit_pre_bad"]),
            helper.make_node(
                "Where", ["mtlkit_pre_bad", "mtlkit_pre_zero", "mtlkit_pre_z"], ["mtlkit_pre_clean"]
            ),
            helper.make_node("Cast", ["mtlkit_pre_clean"], [NUMERIC], to=TensorProto.FLOAT),
        ]
    kept = [i for i in graph.input if i.name not in (CATEGORICAL, NUMERIC)]
    del graph.input[:]
    graph.input.extend([*new_inputs, *kept])
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *old_nodes])
    graph.initializer.extend(inits)
    ml = [o for o in model.opset_import if o.domain == "ai.onnx.ml"]
    if ml:  # LabelEncoder with keys_strings/values_int64s is ai.onnx.ml version 2 or later
        ml[0].version = max(ml[0].version, 2)
    else:
        model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return layout


def export_run(
    run_dir: str | os.PathLike[str],
    *,
    format: ExportFormat = "onnx",
    out: str | os.PathLike[str] | None = None,
    activate: bool = True,
    embed_preprocessing: bool = False,
    exporter: Exporter = "trace",
) -> Path:
    """Export the trained model of a run directory (best weights) with its preprocessing.

    Args:
        run_dir: a run directory written by ``mtlkit run`` (one variant/seed of a comparison).
        format: ``"onnx"`` or ``"torchscript"``.
        out: the export folder (default ``RUN_DIR/export-<format>``).
        activate: apply each task's activation in the graph (probabilities); ``False`` exports
            the raw outputs and the manifest names the activation to apply.
        embed_preprocessing: ONNX and tabular data only: the graph reads raw columns.
        exporter: the ONNX exporter: ``"trace"`` (TorchScript tracing, default) or ``"dynamo"``
            (``torch.export``-based, needs onnxscript).

    Returns:
        The export folder (model file, ``manifest.json``, ``preprocessor.json`` for tabular data).
    """
    predictor = load_predictor(run_dir)
    assert predictor.run_dir is not None
    folder = Path(out) if out is not None else predictor.run_dir / f"export-{format}"
    return export_model(
        predictor,
        folder,
        format=format,
        activate=activate,
        embed_preprocessing=embed_preprocessing,
        exporter=exporter,
    )


RTOL: dict[str, float] = {"float64": 1e-12, "float32": 1e-5, "float16": 5e-3, "bfloat16": 5e-2}
"""Relative tolerance of :func:`verify_export` by output dtype (a few dozen units in the last place)."""


def relative_error(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """``(max |got - want|, max relative error)`` of one output, the relative error of an element
    being ``|got - want| / max(|got|, |want|, s)`` with ``s`` the largest finite ``|want|`` of the
    output (its scale, so elements near 0 are not held to their own tiny magnitude).

    Equal non-finite values (the same infinity, NaN in both) count as equal; any other
    difference in a non-finite element is an infinite error.
    """
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(want, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf, math.inf
    if a.size == 0:
        return 0.0, 0.0
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    finite = np.isfinite(a) & np.isfinite(b)
    if not np.all(same | finite):
        return math.inf, math.inf
    diff = np.abs(np.subtract(a, b, out=np.zeros_like(a), where=finite & ~same))
    fin_b = np.abs(b[np.isfinite(b)])
    scale = float(fin_b.max()) if fin_b.size else 0.0
    denom = np.maximum(np.maximum(np.abs(np.where(finite, a, 0.0)), np.abs(np.where(finite, b, 0.0))), scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / denom)
    return float(diff.max()), float(np.max(rel))


@dataclass(frozen=True)
class ExportCheck:
    """What :func:`verify_export` measured: the largest absolute and relative differences over
    all outputs, each output's relative error and tolerance, and whether every output passed."""

    max_abs: float
    max_rel: float
    outputs: dict[str, tuple[float, float]]
    """``{output: (max relative error, rtol)}``."""
    rows: int
    raw_inputs: bool
    """The export was fed raw columns (embedded preprocessing), the eager model their preprocessing."""

    @property
    def passed(self) -> bool:
        return all(rel <= rtol for rel, rtol in self.outputs.values())

    @property
    def rtol(self) -> float:
        """The tolerance of the output closest to failing (largest error / tolerance)."""
        return max(self.outputs.values(), key=lambda v: v[0] / v[1])[1] if self.outputs else 0.0

    def summary(self) -> str:
        what = "random raw rows through the embedded preprocessing" if self.raw_inputs else "random rows"
        return (
            f"max |export - eager| on {self.rows} {what}: {self.max_abs:.3g}; max relative error "
            f"{self.max_rel:.3g} (tolerance {self.rtol:.0e})"
        )


def raw_example_columns(pre: TabularPreprocessor, n: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random raw columns for ``pre``: known categories, an unseen one and missing ones (``""``,
    ``"?"``) for categorical columns; normal numbers around the training mean with a NaN (missing) for
    numeric ones (no inf: Python preprocessing refuses it, see docs/datasets.md). Strings are
    stripped, as the exported graph expects."""
    rng = np.random.default_rng(seed)
    vocabularies, stats = pre.vocabularies or {}, pre.stats or {}
    out: dict[str, np.ndarray] = {}
    for name in pre.categorical:
        vocab = list(vocabularies[name])
        unseen = "mtlkit-unseen"
        while unseen in vocab:
            unseen += "_"
        specials = [unseen, "", "?"]
        values = [str(v) for v in rng.choice(vocab or specials, n)]
        for i, special in enumerate(specials[: min(n, 3)]):
            values[-1 - i] = special  # the last rows: unseen, then missing values
        out[name] = np.asarray(values, dtype=str)
    for name in pre.numeric:
        mean, std = stats[name]
        x = rng.normal(mean, std if std > 0 else 1.0, n)
        if n >= 2:
            x[-1] = np.nan
        out[name] = x.astype(np.float64)
    return out


def verify_export(
    folder: str | os.PathLike[str],
    predictor: Predictor,
    *,
    n: int = 7,
    seed: int = 1,
    rtol: float | None = None,
) -> ExportCheck:
    """Compare the exported model with ``predictor``'s eager model on ``n`` random rows.

    Runs both (a batch size other than the export's, so the dynamic batch axis is exercised)
    with ONNX Runtime or ``torch.jit.load``. An export with embedded preprocessing is fed raw
    columns (:func:`raw_example_columns`) and the eager model their preprocessing by
    :class:`~mtlkit.data.preprocessing.TabularPreprocessor`. Each output passes when
    ``|export - eager| <= rtol * max(|export|, |eager|, s)`` element-wise, with ``s`` the output's
    largest ``|eager|`` value (:func:`relative_error`) and ``rtol`` from :data:`RTOL` by the
    output's dtype (1e-5 for float32) unless given.
    """
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    embedded = bool(manifest["preprocessing"] and manifest["preprocessing"]["embedded"])
    layout = [i["name"] for i in _input_layout(predictor)]
    if embedded:
        pre = predictor.preprocessor
        if pre is None:
            raise DataError(
                f"The export in {folder} reads raw columns (embedded preprocessing), but the model given "
                "to check it against has no fitted preprocessor; load it with load_predictor(run_dir)."
            )
        raw = raw_example_columns(pre, n, seed=seed)
        ready = pre.transform(raw)
        args = tuple(ready[name] for name in layout)
        feeds = {i["name"]: raw[i["name"]] for i in manifest["inputs"]}
    else:
        args = example_inputs(predictor, n, seed=seed)
        feeds = onnx_inputs(manifest, args)
    activate = all(o["applied"] for o in manifest["outputs"])
    names = [o["name"] for o in manifest["outputs"]]
    wrapper = ExportWrapper(
        _inference_copy(predictor.model), layout, names, predictor.tasks, activate=activate, as_dict=False
    )
    with torch.no_grad():
        eager = list(wrapper(*args))
    if manifest["format"] == "onnx":
        ort = _require("onnxruntime", "Checking an ONNX export")
        session = ort.InferenceSession(str(folder / manifest["file"]), providers=["CPUExecutionProvider"])
        got = session.run(names, feeds)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(folder / manifest["file"]))
        with torch.no_grad():
            res = module(*args)
        got = [res[name].numpy() for name in names]
    per: dict[str, tuple[float, float]] = {}
    max_abs = max_rel = 0.0
    for name, a, e in zip(names, got, eager):
        tol = rtol if rtol is not None else RTOL.get(str(e.dtype).removeprefix("torch."), RTOL["float32"])
        abs_err, rel_err = relative_error(np.asarray(a), e.double().numpy())
        per[name] = (rel_err, tol)
        max_abs, max_rel = max(max_abs, abs_err), max(max_rel, rel_err)
    return ExportCheck(max_abs=max_abs, max_rel=max_rel, outputs=per, rows=n, raw_inputs=embedded)
