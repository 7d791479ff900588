"""MULAN multi-label benchmarks: the ARFF reader and the yeast / scene / emotions loaders."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _datasets import shared_data
from mtlkit.data.multilabel import multilabel, read_arff, read_mulan_labels
from mtlkit.errors import DataError

ARFF = """% a comment
@relation 'toy data'

@attribute 'first feature' numeric
@attribute f2 REAL
@attribute color {red,green,blue}
@attribute L1 {0,1}
@attribute L2 {0,1}

@data
1.5,2,green,1,0
-3,?,red,0,1
{0 7, 2 blue, 4 1}
0,0,red,?,?
"""
XML = """<?xml version="1.0" encoding="utf-8"?>
<labels xmlns="http://mulan.sourceforge.net/labels"><label name="L2"></label><label name="L1"></label></labels>
"""


def test_read_arff_dense_sparse_nominal_and_missing(tmp_path: Path) -> None:
    (tmp_path / "t.arff").write_text(ARFF)
    arff = read_arff(tmp_path / "t.arff")
    assert arff.relation == "toy data" and arff.names == ("first feature", "f2", "color", "L1", "L2")
    assert arff.nominal[2] == ("red", "green", "blue") and arff.nominal[0] is None
    expected = np.array(
        [
            [1.5, 2, 1, 1, 0],
            [-3, np.nan, 0, 0, 1],
            [7, 0, 2, 0, 1],  # sparse: omitted values are 0 (the first declared value for nominals)
            [0, 0, 0, np.nan, np.nan],
        ]
    )
    np.testing.assert_array_equal(arff.data, expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            ARFF.replace("1.5,2,green,1,0", "1.5,2,green,1"),
            r"t.arff, line 11: 4 values, expected 5 .*truncated",
        ),
        (
            ARFF.replace("-3,?,red", "-3,?,pink"),
            r"line 12: value 'pink' is not valid for attribute 'color' \(one of",
        ),
        (
            ARFF.replace("@attribute f2 REAL", "@attribute f2 string"),
            r"line 5: attribute 'f2' has type 'string'",
        ),
        (ARFF.split("@data")[0], r"t.arff has no @data section"),
        (ARFF.replace("{0 7, 2 blue, 4 1}", "{0 7, 9 1}"), r"line 13: sparse index 9 outside 0..4"),
        (
            ARFF.replace("1.5,2,", "1.5,two,"),
            r"line 11: value 'two' is not valid for attribute 'f2' \(numeric\)",
        ),
    ],
)
def test_read_arff_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "t.arff").write_text(text)
    with pytest.raises(DataError, match=message):
        read_arff(tmp_path / "t.arff")


def _toy_dataset(root: Path) -> None:
    d = root / "emotions"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    header = "@relation e\n" + "".join(f"@attribute a{i} numeric\n" for i in range(3))
    header += "@attribute L1 {0,1}\n@attribute L2 {0,1}\n@data\n"
    for name, n in (("emotions-train.arff", 20), ("emotions-test.arff", 6)):
        rows = [
            ",".join([*(f"{v:.3f}" for v in rng.normal(size=3)), str(i % 2), str((i // 2) % 2)])
            for i in range(n)
        ]
        if name.endswith("train.arff"):
            rows.append("1,2,3,?,?")  # no label at all: left out
            rows.append("1,2,3,?,1")  # one label missing: NaN for it
        (d / name).write_text(header + "\n".join(rows) + "\n")
    (d / "emotions.xml").write_text(XML)


def test_toy_dataset_modes_and_unlabelled_rows(tmp_path: Path) -> None:
    _toy_dataset(tmp_path)
    one = multilabel(dataset="emotions", path=str(tmp_path), verify=False, val_fraction=0.25)
    assert [t.name for t in one.tasks] == ["labels"] and one.tasks[0].num_classes == 2
    assert one.info["dropped_unlabelled"] == 1 and len(one.train) + len(one.val) == 21
    assert one.info["labels"] == ["L1", "L2"]  # data column order, whatever the XML order
    y = torch.cat([one.train.targets["labels"], one.val.targets["labels"]])
    assert int(torch.isnan(y).sum()) == 1
    per = multilabel(
        dataset="emotions", path=str(tmp_path), verify=False, val_fraction=0.25, as_binary_tasks=True
    )
    assert [t.name for t in per.tasks] == ["L1", "L2"]
    torch.testing.assert_close(per.train.targets["L2"], one.train.targets["labels"][:, 1], equal_nan=True)
    assert per.test.targets["L1"].tolist() == [0.0, 1.0] * 3
    assert per.input_spec.numeric == ("a0", "a1", "a2")
    x = per.train.inputs["numeric"]
    torch.testing.assert_close(x.mean(0), torch.zeros(3), atol=1e-5, rtol=0)  # standardised on train


def test_missing_and_mismatched_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"yeast: missing file\(s\) yeast-train.arff .* download=True"):
        multilabel(dataset="yeast", path=str(tmp_path))
    _toy_dataset(tmp_path)
    (tmp_path / "emotions" / "emotions.xml").write_text(XML.replace('"L2"', '"L9"'))
    with pytest.raises(DataError, match=r"names labels \['L9'\] that are not attributes"):
        multilabel(dataset="emotions", path=str(tmp_path), verify=False)
    (tmp_path / "emotions" / "emotions.xml").write_text("<labels>")
    with pytest.raises(DataError, match="not a readable MULAN label file"):
        read_mulan_labels(tmp_path / "emotions" / "emotions.xml")


# ---------------------------------------------------------------------------------------------- real files
README = {  # rows, features, labels, label cardinality (train, test) from the folders' READMEs
    "yeast": ((1500, 917), 103, 14, (4.228, 4.252)),
    "scene": ((1211, 1196), 294, 6, (1.062, 1.086)),
    "emotions": ((391, 202), 72, 6, (1.813, 1.975)),
}


@pytest.mark.parametrize("name", list(README))
def test_real_files_match_the_readmes(name: str) -> None:
    root = shared_data(name)
    (n_train, n_test), n_features, n_labels, (card_train, card_test) = README[name]
    s = multilabel(dataset=name, path=str(root), as_binary_tasks=True)
    assert len(s.train) + len(s.val) == n_train and len(s.test) == n_test
    assert len(s.input_spec.numeric) == n_features and len(s.tasks) == n_labels
    y_train = torch.stack([torch.cat([s.train.targets[t.name], s.val.targets[t.name]]) for t in s.tasks], 1)
    y_test = torch.stack([s.test.targets[t.name] for t in s.tasks], 1)
    assert float(y_train.sum() / n_train) == pytest.approx(card_train, abs=5e-4)
    assert float(y_test.sum() / n_test) == pytest.approx(card_test, abs=5e-4)
    assert set(read_mulan_labels(root / name / f"{name}.xml")) == set(s.info["labels"])
    # an independent read of the first test row with the csv module: labels by name
    with (root / name / f"{name}-test.arff").open() as fh:
        lines = [ln for ln in fh if ln.strip() and not ln.startswith(("@", "%"))]
    names = read_arff(root / name / f"{name}-test.arff").names
    first = next(csv.reader([lines[0]]))
    for label, task in s.info["labels"].items():
        assert s.test.targets[task][0].item() == float(first[names.index(label)])


def test_real_truncated_copy_is_named(tmp_path: Path) -> None:
    root = shared_data("emotions")
    shutil.copytree(root / "emotions", tmp_path / "emotions")
    f = tmp_path / "emotions" / "emotions-test.arff"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 300])
    with pytest.raises(
        DataError, match=r"emotions-test.arff has 131,707 bytes, expected 132,007: .*truncated"
    ):
        multilabel(dataset="emotions", path=str(tmp_path))
    with pytest.raises(DataError, match=r"emotions-test.arff, line \d+: \d+ values, expected 78 .*truncated"):
        multilabel(dataset="emotions", path=str(tmp_path), verify=False)
