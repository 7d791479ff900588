"""CTR/CVR data: the Ali-CCP and AliExpress sample loaders and the synthetic CTR/CVR generator."""

from __future__ import annotations

import io
import math
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from _datasets import shared_data as _shared_data
from mtlkit.data import ali_ccp_sample, aliexpress_sample, ctr_cvr_targets, ctr_cvr_tasks
from mtlkit.data.ctr import ALI_CCP_SAMPLE, ALIEXPRESS_SAMPLE
from mtlkit.data.schema import FeatureSchema
from mtlkit.data.synthetic_ctr import synthetic_ctr_cvr, synthetic_ctr_cvr_splits
from mtlkit.errors import DataError
from mtlkit.registries import DATASETS


def shared_data() -> Path:
    return _shared_data("ali-ccp-sample", "aliexpress-sample")


# ---------------------------------------------------------------------------------------------- task sets
def test_task_sets_train_different_losses_on_the_same_tasks() -> None:
    esmm, clicked = ctr_cvr_tasks("esmm"), ctr_cvr_tasks("clicked_cvr")
    assert [t.name for t in esmm] == [t.name for t in clicked] == ["ctr", "ctcvr", "cvr"]
    assert [t.train for t in esmm] == [True, True, False]
    assert [t.train for t in clicked] == [True, False, True]
    assert [t.logits for t in esmm] == [True, False, False]
    funnel = ctr_cvr_tasks("funnel")
    assert [(t.name, t.logits, t.train) for t in funnel] == [("ctr", True, True), ("ctcvr", True, True)]
    with pytest.raises(ValueError, match="task_set must be 'esmm', 'clicked_cvr' or 'funnel'; got 'x'"):
        ctr_cvr_tasks("x")  # type: ignore[arg-type]


def test_targets_from_click_and_conversion() -> None:
    t = ctr_cvr_targets(torch.tensor([1, 0, 1, 0]), torch.tensor([1, 0, 0, 0]))
    assert t["ctr"].tolist() == [1, 0, 1, 0] and t["ctcvr"].tolist() == [1, 0, 0, 0]
    assert t["cvr"][0] == 1 and t["cvr"][2] == 0 and t["cvr"][[1, 3]].isnan().all()
    with pytest.raises(DataError, match="f.csv: row 1 has a conversion without a click"):
        ctr_cvr_targets(torch.tensor([1, 0]), torch.tensor([0, 1]), source="f.csv")
    with pytest.raises(DataError, match="f.csv: click labels must be 0 or 1; row 0 has 2.0"):
        ctr_cvr_targets(torch.tensor([2, 0]), torch.tensor([0, 0]), source="f.csv")


# ---------------------------------------------------------------------------------------------- real samples
def test_ali_ccp_sample_parses_with_the_readme_counts() -> None:
    d = ali_ccp_sample(shared_data())
    assert (len(d.train), len(d.val), len(d.test)) == (100, 50, 50)
    counts = {s: (int(ds.targets["ctr"].sum()), int(ds.targets["ctcvr"].sum())) for s, ds in
              (("train", d.train), ("val", d.val), ("test", d.test))}  # fmt: skip
    assert counts == {"train": (7, 1), "val": (3, 1), "test": (2, 1)}  # README: clicks, purchases
    assert d.info["counts"]["train"] == {"impressions": 100, "clicks": 7, "conversions": 1}
    spec = d.input_spec
    assert isinstance(spec, FeatureSchema) and (spec.num_categorical, spec.num_numeric) == (23, 8)
    assert d.train.inputs["categorical"].shape == (100, 23) and d.test.inputs["numeric"].shape == (50, 8)
    cvr, click = d.train.targets["cvr"], d.train.targets["ctr"]
    assert torch.equal(cvr.isnan(), click == 0) and cvr[click > 0].sum() == 1
    assert [t.train for t in d.tasks] == [True, True, False]
    # the vocabularies come from the training file only: a category seen only in test is unknown (0)
    pre = d.preprocessor
    assert pre.fitted and len(pre.vocabularies["205"]) + 1 == spec.cardinalities[spec.categorical.index("205")]


def test_aliexpress_sample_parses_with_the_readme_counts() -> None:
    d = aliexpress_sample(shared_data(), task_set="clicked_cvr")
    assert (len(d.train), len(d.test)) == (100, 20) and d.val is None
    assert int(d.train.targets["ctr"].sum()) == 60 and int(d.train.targets["ctcvr"].sum()) == 2
    assert int(d.test.targets["ctr"].sum()) == 10 and int(d.test.targets["ctcvr"].sum()) == 2
    assert (d.input_spec.num_categorical, d.input_spec.num_numeric) == (16, 63)
    assert "search_id" not in d.input_spec.categorical + d.input_spec.numeric
    assert [t.train for t in d.tasks] == [True, False, True]


def test_loaders_find_files_through_mtlkit_data_and_are_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLKIT_DATA", str(shared_data()))
    assert len(DATASETS.build("ali_ccp_sample").train) == 100
    assert len(DATASETS.build("aliexpress", task_set="esmm").test) == 20


def test_missing_files_say_which_files_go_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        ali_ccp_sample(tmp_path)
    msg = str(info.value)
    for name in ("ali_ccp_train_sample.csv", "ali_ccp_val_sample.csv", "ali_ccp_test_sample.csv"):
        assert name in msg
    assert str(tmp_path) in msg and "download=True" in msg


def copy_sample(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
        (dst / f.name).chmod(0o644)
    return dst


def test_corrupt_and_truncated_files_are_named(tmp_path: Path) -> None:
    folder = copy_sample(shared_data() / "ali-ccp-sample", tmp_path / "ali-ccp-sample")
    val = folder / "ali_ccp_val_sample.csv"
    data = bytearray(val.read_bytes())
    data[200] = ord("7") if data[200] != ord("7") else ord("8")  # same size, different content
    val.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"ali_ccp_val_sample.csv has SHA-256 .* corrupt"):
        ali_ccp_sample(tmp_path)
    shutil.copy(shared_data() / "ali-ccp-sample" / val.name, val)
    test = folder / "ali_ccp_test_sample.csv"
    test.write_bytes(test.read_bytes()[:-40])  # cut inside the last row
    with pytest.raises(DataError, match=r"ali_ccp_test_sample.csv has 5,392 bytes, expected 5,432: the file is truncated"):
        ali_ccp_sample(tmp_path, verify=True)
    with pytest.raises(DataError, match=r"ali_ccp_test_sample.csv, line 51: \d+ fields, expected 33"):
        ali_ccp_sample(tmp_path, verify=False)


def test_bad_contents_name_the_file_without_checksums(tmp_path: Path) -> None:
    folder = copy_sample(shared_data() / "aliexpress-sample", tmp_path / "aliexpress-sample")
    train = folder / "aliexpress_train_sample.csv"
    lines = train.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("click")], row[header.index("conversion")] = "0", "1"
    train.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(DataError, match="aliexpress_train_sample.csv: row 0 has a conversion without a click"):
        aliexpress_sample(tmp_path, verify=False)
    train.write_text(lines[0].replace("numerical_5", "numerical_x") + "\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match="aliexpress_train_sample.csv: missing column.s. numerical_5"):
        aliexpress_sample(tmp_path, verify=False)


def test_download_only_when_asked_from_the_pinned_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = shared_data() / "aliexpress-sample"
    fetched: list[str] = []

    def fake_urlopen(url: str, timeout: float = 0) -> io.BytesIO:  # no network in tests
        fetched.append(url)
        return io.BytesIO((src / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DataError, match="missing file"):
        aliexpress_sample(tmp_path)
    assert fetched == []
    d = aliexpress_sample(tmp_path, download=True)
    assert len(d.train) == 100
    assert all(u.startswith("https://raw.githubusercontent.com/datawhalechina/torch-rechub/5a73b2e") for u in fetched)
    assert {u.rsplit("/", 1)[1] for u in fetched} == {f.name for f in ALIEXPRESS_SAMPLE.files}
    assert all(f.url and "/ali-ccp/" in f.url for f in ALI_CCP_SAMPLE.files)


# ---------------------------------------------------------------------------------------------- synthetic
def logit(p: torch.Tensor) -> torch.Tensor:
    p = p.double()
    return torch.log(p) - torch.log1p(-p)


def test_synthetic_ctr_cvr_follows_its_definition() -> None:
    s, rho = 1.5, 0.6
    d = synthetic_ctr_cvr(20_000, dim=8, ctr=0.08, cvr=0.25, selection_bias=s, correlation=rho, seed=3)
    t, x = d.targets, d.inputs.double()
    assert t["pctr_true"].double().mean().item() == pytest.approx(0.08, abs=1e-5)  # levels by bisection
    assert t["pcvr_true"].double().mean().item() == pytest.approx(0.25, abs=1e-5)
    # both probabilities are logistic in x; recover the coefficient vectors by least squares
    X = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    beta_c = torch.linalg.lstsq(X, logit(t["pctr_true"]).unsqueeze(1)).solution[:-1, 0]
    beta_v = torch.linalg.lstsq(X, logit(t["pcvr_true"]).unsqueeze(1)).solution[:-1, 0]
    # beta_c = s u + w and beta_v = rho u + sqrt(1 - rho^2) v, with u, v, w orthonormal
    assert beta_c.norm().item() ** 2 == pytest.approx(s * s + 1, rel=1e-4)
    assert beta_v.norm().item() == pytest.approx(1.0, rel=1e-4)
    assert (beta_c @ beta_v).item() == pytest.approx(s * rho, rel=1e-3)
    click, would = t["ctr"], t["would_convert"]
    assert torch.equal(t["ctcvr"], click * would)
    assert torch.equal(t["cvr"].isnan(), click == 0) and torch.equal(t["cvr"][click > 0], would[click > 0])
    assert click.mean().item() == pytest.approx(0.08, abs=0.01) and would.mean().item() == pytest.approx(0.25, abs=0.01)
    # the draws follow the probabilities: Bernoulli means per probability decile
    assert abs(would[t["pcvr_true"] > 0.5].mean() - t["pcvr_true"][t["pcvr_true"] > 0.5].mean()) < 0.02
    again = synthetic_ctr_cvr(20_000, dim=8, ctr=0.08, cvr=0.25, selection_bias=s, correlation=rho, seed=3)
    assert torch.equal(again.inputs, d.inputs) and torch.equal(again.targets["ctr"], click)
    assert not torch.equal(synthetic_ctr_cvr(20_000, dim=8, seed=4).inputs, d.inputs)


def test_selection_bias_makes_clicked_impressions_a_biased_sample() -> None:
    biased = synthetic_ctr_cvr(40_000, selection_bias=3.0, correlation=0.8, seed=1).info
    fair = synthetic_ctr_cvr(40_000, selection_bias=0.0, correlation=0.8, seed=1).info
    assert biased["selection_score_clicked"] > 1.0 and abs(fair["selection_score_clicked"]) < 0.1
    assert biased["pcvr_clicked"] > biased["cvr"] + 0.15  # clicked impressions convert far more often
    assert fair["pcvr_clicked"] == pytest.approx(fair["cvr"], abs=0.02)


def brute_force_auc(score: torch.Tensor, label: torch.Tensor) -> float:
    pos, neg = score[label > 0].double(), score[label == 0].double()
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def test_synthetic_splits_hide_unclicked_conversions_except_in_the_test_oracle() -> None:
    d = synthetic_ctr_cvr_splits(n_train=600, n_val=200, n_test=300, seed=2)
    assert (len(d.train), len(d.val), len(d.test)) == (600, 200, 300) and d.input_spec == 16
    for part in (d.train, d.val):
        assert torch.equal(part.targets["cvr"].isnan(), part.targets["ctr"] == 0)
    test = d.test.targets
    assert not test["cvr"].isnan().any() and torch.equal(test["cvr"], test["would_convert"])
    assert d.info["oracle_test_cvr_auc"] == pytest.approx(brute_force_auc(test["pcvr_true"], test["would_convert"]))
    observed = synthetic_ctr_cvr_splits(n_train=600, n_val=200, n_test=300, seed=2, test_cvr="clicked")
    assert torch.equal(observed.test.targets["cvr"].isnan(), observed.test.targets["ctr"] == 0)
    assert [t.train for t in synthetic_ctr_cvr_splits(n_train=50, n_test=0, n_val=0, task_set="clicked_cvr").tasks] == [
        True, False, True,
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"ctr \(the mean rate\) must be in \(0, 1\); got 1.5"):
        synthetic_ctr_cvr(10, ctr=1.5)
    with pytest.raises(ValueError, match="selection_bias must be a float >= 0; got -1"):
        synthetic_ctr_cvr(10, selection_bias=-1)
    with pytest.raises(ValueError, match=r"correlation must be in \[-1, 1\]; got 2"):
        synthetic_ctr_cvr(10, correlation=2)
    with pytest.raises(DataError, match="the training split has no click"):
        synthetic_ctr_cvr_splits(n_train=3, n_val=0, n_test=0, ctr=1e-6)
    assert math.isfinite(np.float64(d.info["click_rate"]))
