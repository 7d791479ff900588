"""TabularPreprocessor and the embedding front end, against hand-worked cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtlkit.data import FeatureSchema, TabularPreprocessor
from mtlkit.errors import DataError, ShapeError
from mtlkit.models import EmbeddingFrontEnd
from mtlkit.models.backbones import BACKBONES

TRAIN = {
    "color": np.array(["red", "blue", "red", "green", "red", "blue", "?"]),
    "size": np.array([1, 2, 2, 3, 1, 1, 2]),
    "age": np.array(["10", "20", "30", "?", "40", "50", "60"]),
}


def test_vocabulary_by_frequency_with_unknown_bucket_zero() -> None:
    pre = TabularPreprocessor(categorical=["color", "size"], numeric=["age"]).fit(TRAIN)
    # color: red x3, blue x2, green x1 ('?' is missing) -> red=1, blue=2, green=3
    assert pre.vocabularies == {"color": ["red", "blue", "green"], "size": ["1", "2", "3"]}
    out = pre.transform({"color": ["blue", "purple", "", "red"], "size": [3, 2, 9, 1], "age": ["35"] * 4})
    assert out["categorical"].tolist() == [[2, 3], [0, 2], [0, 0], [1, 1]]
    assert pre.schema == FeatureSchema(("color", "size"), (4, 4), ("age",))


def test_numeric_standardised_with_training_statistics_and_missing_to_zero() -> None:
    pre = TabularPreprocessor(numeric=["age"]).fit(TRAIN)
    ages = np.array([10, 20, 30, 40, 50, 60], dtype=np.float64)  # '?' excluded from the fit
    mean, std = ages.mean(), ages.std()
    out = pre.transform({"age": ["35", "?", "nan", "70"]})["numeric"]
    expected = torch.tensor([[(35 - mean) / std], [0.0], [0.0], [(70 - mean) / std]], dtype=torch.float32)
    torch.testing.assert_close(out, expected)
    assert "categorical" not in pre.transform({"age": ["1"]})


def test_min_frequency_sends_rare_values_to_unknown() -> None:
    pre = TabularPreprocessor(categorical=["color"], min_frequency=2).fit(TRAIN)
    assert pre.vocabularies == {"color": ["red", "blue"]}
    assert pre.transform({"color": ["green", "red"]})["categorical"].tolist() == [[0], [1]]


def test_state_round_trips_through_json() -> None:
    pre = TabularPreprocessor(categorical=["color", "size"], numeric=["age"]).fit(TRAIN)
    state = json.loads(json.dumps(pre.state_dict()))
    again = TabularPreprocessor.from_state_dict(state)
    cols = {"color": ["green", "red"], "size": [2, 7], "age": ["5", "?"]}
    for k, v in pre.transform(cols).items():
        assert torch.equal(v, again.transform(cols)[k])
    assert again.schema == pre.schema


def test_errors_name_the_column_and_the_fix() -> None:
    pre = TabularPreprocessor(categorical=["color"], numeric=["age"])
    with pytest.raises(DataError, match="not fitted"):
        pre.transform(TRAIN)
    with pytest.raises(DataError, match=r"columns \['age'\] are missing"):
        pre.fit({"color": TRAIN["color"]})
    with pytest.raises(DataError, match="numeric column 'age' holds a non-numeric value 'old'"):
        pre.fit({"color": ["a", "b"], "age": ["1", "old"]})
    with pytest.raises(DataError, match="different lengths"):
        pre.fit({"color": ["a", "b"], "age": ["1"]})
    with pytest.raises(DataError, match="lacks the fitted values"):
        TabularPreprocessor.from_state_dict(
            {"categorical": ["c"], "numeric": [], "vocabularies": {}, "stats": {}}
        )
    with pytest.raises(DataError, match="not written by"):
        TabularPreprocessor.from_state_dict({"numeric": []})
    with pytest.raises(ValueError, match="unique"):
        TabularPreprocessor(categorical=["a"], numeric=["a"])


def test_embedding_front_end_equals_per_column_lookups() -> None:
    schema = FeatureSchema(("a", "b", "c"), (3, 5, 2), ("x", "y"))
    fe = EmbeddingFrontEnd(schema, 4)
    assert fe.out_features == 3 * 4 + 2
    codes = torch.tensor([[0, 4, 1], [2, 0, 0]])
    num = torch.randn(2, 2)
    out = fe({"categorical": codes, "numeric": num})
    # reference: the rows of the shared table that belong to each column, looked up one by one
    w = fe.table.weight
    starts = [0, 3, 8]
    ref = torch.stack(
        [torch.cat([*(w[starts[j] + int(codes[i, j])] for j in range(3)), num[i]]) for i in range(2)]
    )
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert w.grad is not None and w.grad[1].abs().sum() == 0  # row 1 of column a was never used


def test_embedding_front_end_rejects_bad_inputs_clearly() -> None:
    fe = EmbeddingFrontEnd(FeatureSchema(("a",), (3,), ("x",)), 2)
    with pytest.raises(ShapeError, match="takes named inputs"):
        fe(torch.zeros(2, 2))
    with pytest.raises(ShapeError, match=r"column 'a' has index 3, outside 0..2"):
        fe({"categorical": torch.tensor([[3]]), "numeric": torch.zeros(1, 1)})
    with pytest.raises(ShapeError, match=r"inputs\['numeric'\] of shape \(N, 1\)"):
        fe({"categorical": torch.tensor([[1]])})
    with pytest.raises(ShapeError, match="integer category indices"):
        fe({"categorical": torch.tensor([[1.0]]), "numeric": torch.zeros(1, 1)})
    with pytest.raises(ValueError, match="takes tabular inputs"):
        BACKBONES.build("embedding", input_spec=8)


def test_flatten_backbone() -> None:
    fl = BACKBONES.build("flatten", input_spec=(1, 4, 4))
    assert fl.out_features == 16 and fl(torch.zeros(3, 1, 4, 4)).shape == (3, 16)
    with pytest.raises(ShapeError, match=r"\(N, 1, 4, 4\)"):
        fl(torch.zeros(3, 16))
