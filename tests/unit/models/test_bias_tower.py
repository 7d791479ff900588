"""The shallow bias tower: where its term goes, that serving never sees it, its feature dropout,
its parameters' ownership, and its YAML declaration (validate == run)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mtlkit.config.check import check_experiment
from mtlkit.config.load import resolve
from mtlkit.data.schema import FeatureSchema
from mtlkit.errors import ConfigError
from mtlkit.models import BiasTower, MultiTaskModel, mmoe, split_schema, with_bias_tower
from mtlkit.tasks import Task
from mtlkit.training.trainer import Trainer

SCHEMA = FeatureSchema(("device", "position", "genre"), (4, 6, 3), ("x0", "position_score", "x1"))
FEATURES = ["position", "position_score", "device"]


class Recorder(MultiTaskModel):
    """A base model whose outputs are linear in the numbers it reads, and which records them."""

    def __init__(self) -> None:
        super().__init__()
        self.task_names = ("click", "watch", "like")
        self.w = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.seen: list[dict[str, Tensor]] = []

    def _forward(self, x: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        self.seen.append(dict(x))
        num, cat = x["numeric"], x["categorical"].double()
        base = num @ self.w.double() + 0.25 * cat[:, 0]
        return {"click": base.reshape(-1, 1), "watch": 2 * base, "like": -base}, {}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return []


def _inputs(n: int = 5, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(1, k, (n,), generator=g) for k in SCHEMA.cardinalities], dim=1)
    return {"categorical": cat, "numeric": torch.randn(n, 3, generator=g, dtype=torch.float64)}


def _hand_model(**kwargs: Any) -> BiasTower:
    """Linear towers (dims=[]) with hand-set weights: term = sum of embedding values + 3 * position_score."""
    model = with_bias_tower(
        Recorder(),
        tasks=["click", "watch"],
        schema=SCHEMA,
        features=FEATURES,
        dims=[],
        embedding_dim=1,
        **kwargs,
    ).double()
    with torch.no_grad():
        for t, head in model.heads.items():
            sign = 1.0 if t == "click" else -1.0
            head.embeddings[0].weight.copy_(torch.tensor([[0.0], [1.0], [2.0], [3.0]]))  # device
            head.embeddings[1].weight.copy_(10 * torch.arange(6.0).reshape(6, 1))  # position
            lin = head.mlp.net[0]
            lin.weight.copy_(
                sign * torch.tensor([[1.0, 1.0, 3.0]])
            )  # [device emb, position emb, position_score]
            lin.bias.fill_(sign * 0.5)
    return model


def test_split_schema_moves_the_bias_columns_out_of_the_main_model() -> None:
    main, bias = split_schema(SCHEMA, FEATURES)
    assert main == FeatureSchema(("genre",), (3,), ("x0", "x1"))
    assert bias == FeatureSchema(("device", "position"), (4, 6), ("position_score",))
    with pytest.raises(ValueError, match=r"\['rank'\] are not columns"):
        split_schema(SCHEMA, ["rank"])
    with pytest.raises(ValueError, match="main model would read nothing"):
        split_schema(FeatureSchema(("position",), (3,)), ["position"])


def test_bias_logit_is_added_exactly_where_documented_in_training_only() -> None:
    model = _hand_model(feature_dropout=0.0)
    x = _inputs()
    cat, num = x["categorical"].double(), x["numeric"]
    base = num[:, [0, 2]] @ torch.tensor([1.0, -2.0], dtype=torch.float64) + 0.25 * cat[:, 2]  # genre, x0, x1
    term = (
        cat[:, 0] + 10 * cat[:, 1] + 3 * num[:, 1] + 0.5
    )  # device index, 10 x position index, position_score
    model.train()
    out = model(x)
    seen = model.base.seen[-1]
    assert torch.equal(seen["categorical"], x["categorical"][:, [2]])  # the base model reads genre only
    assert torch.equal(seen["numeric"], num[:, [0, 2]])
    torch.testing.assert_close(out["click"], (base + term).reshape(-1, 1))  # added to the binary logit
    torch.testing.assert_close(out["watch"], 2 * base - term)  # added to the regression value
    torch.testing.assert_close(out["like"], -base)  # a task the tower does not feed
    model.eval()
    out = model(x)
    torch.testing.assert_close(out["click"], base.reshape(-1, 1))
    torch.testing.assert_close(out["watch"], 2 * base)


def test_serving_missing_and_reference_evaluate_the_tower_at_fixed_features() -> None:
    x = _inputs()
    cat, num = x["categorical"].double(), x["numeric"]
    base = num[:, [0, 2]] @ torch.tensor([1.0, -2.0], dtype=torch.float64) + 0.25 * cat[:, 2]
    missing = _hand_model(serving="missing").eval()
    torch.testing.assert_close(missing(x)["click"], (base + 0.5).reshape(-1, 1))  # every bias feature at 0
    ref = _hand_model(serving="reference", reference={"position": 1, "position_score": 2.0}).eval()
    torch.testing.assert_close(ref(x)["click"], (base + 10 + 6 + 0.5).reshape(-1, 1))  # device missing
    with pytest.raises(ValueError, match="needs reference"):
        _hand_model(serving="reference")
    with pytest.raises(ValueError, match=r"\['rank'\], which are not bias features"):
        _hand_model(serving="reference", reference={"rank": 1})


def test_nothing_of_the_tower_reaches_eval_predictions() -> None:
    """Eval outputs do not move when the tower's weights or the bias features change."""
    torch.manual_seed(0)
    main, _ = split_schema(SCHEMA, FEATURES)
    tasks = [Task(name="click", kind="binary"), Task(name="like", kind="binary")]
    base = mmoe(None, tasks, num_experts=2, expert_dims=[8], tower_dims=[4], input_layer=_front(main))
    model = with_bias_tower(base, tasks=["click", "like"], schema=SCHEMA, features=FEATURES).eval()
    x = _inputs(16)
    before = model(x)
    with torch.no_grad():
        for p in model.heads.parameters():
            p.add_(torch.randn_like(p) * 10)
    y = {"categorical": x["categorical"].clone(), "numeric": x["numeric"].clone().float()}
    y["categorical"][:, :2] = 1  # other device and position
    y["numeric"][:, 1] = 100.0
    after = model({"categorical": y["categorical"], "numeric": y["numeric"]})
    for k in before:
        torch.testing.assert_close(after[k], before[k])
    model.train()
    trained = model(y)
    assert not torch.allclose(trained["click"], before["click"])  # the term is there in training


def _front(schema: FeatureSchema) -> nn.Module:
    from mtlkit.models.backbones import EmbeddingFrontEnd

    return EmbeddingFrontEnd(schema, 4)


def test_feature_dropout_rate_measured_over_many_draws() -> None:
    model = _hand_model(feature_dropout=0.1)
    model.train()
    n = 40_000
    x = {
        "categorical": torch.tensor([[1, 1, 1]]).repeat(n, 1),
        "numeric": torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64).repeat(n, 1),
    }
    torch.manual_seed(123)
    cat, num = model._dropped(x["categorical"][:, :2], x["numeric"][:, 1:2])
    dropped = torch.cat([(cat == 0), (num == 0)], dim=1).double()  # (n, 3): one column per bias feature
    sigma = math.sqrt(0.1 * 0.9 / n)
    for j in range(3):
        assert abs(dropped[:, j].mean().item() - 0.1) < 4 * sigma, (j, dropped[:, j].mean())
    both = (dropped[:, 0] * dropped[:, 1]).mean().item()  # features drop independently
    assert abs(both - 0.01) < 4 * math.sqrt(0.01 * 0.99 / n)
    # the same seed draws the same masks (what resuming from a checkpoint relies on)
    torch.manual_seed(123)
    again, _ = model._dropped(x["categorical"][:, :2], x["numeric"][:, 1:2])
    assert torch.equal(again, cat)
    # the forward pass draws the same way: a dropped feature reaches the tower as missing
    torch.manual_seed(7)
    cat, num = model._dropped(x["categorical"][:, :2], x["numeric"][:, 1:2])
    torch.manual_seed(7)
    out = model(x)["click"].reshape(-1)
    kept = torch.cat([(cat != 0), (num != 0)], dim=1).double()
    want = 0.25 + 0.5 + kept[:, 0] * 1 + kept[:, 1] * 10 + kept[:, 2] * 3  # genre 1 x 0.25 + tower
    torch.testing.assert_close(out, want)


def test_generator_makes_dropout_independent_of_the_global_rng() -> None:
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = _hand_model(feature_dropout=0.5, generator=g1).train()
    b = _hand_model(feature_dropout=0.5, generator=g2).train()
    x = _inputs(64)
    torch.manual_seed(0)
    out_a = a(x)["click"]
    torch.manual_seed(1)
    out_b = b(x)["click"]
    torch.testing.assert_close(out_a, out_b)


def test_tower_parameters_belong_to_the_tasks_they_feed() -> None:
    main, _ = split_schema(SCHEMA, FEATURES)
    tasks = [Task(name="click", kind="binary"), Task(name="like", kind="binary")]
    base = mmoe(None, tasks, num_experts=2, expert_dims=[8], tower_dims=[4], input_layer=_front(main))
    model = with_bias_tower(base, tasks=["click"], schema=SCHEMA, features=FEATURES)
    tower = {id(p) for p in model.heads["click"].parameters()}
    assert tower <= {id(p) for p in model.task_parameters("click")}
    assert not tower & {id(p) for p in model.task_parameters("like")}
    assert not tower & {id(p) for p in model.shared_parameters()}
    assert {id(p) for p in base.shared_parameters()} == {id(p) for p in model.shared_parameters()}
    assert model.has_representation


def test_input_key_mode_reads_a_separate_bias_tensor() -> None:
    class Flat(MultiTaskModel):
        task_names = ("click",)

        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def _forward(self, x: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
            return {"click": self.lin(x["x"])}, {}

        def task_parameters(self, task: str) -> list[nn.Parameter]:
            return list(self.lin.parameters())

    model = with_bias_tower(
        Flat(), tasks=["click"], input_key="bias", num_bias_features=2, features=["pos", "dev"]
    )
    x = {"x": torch.randn(4, 3), "bias": torch.randn(4, 2)}
    model.eval()
    torch.testing.assert_close(model(x)["click"], model.base.lin(x["x"]))
    model.train()
    model.feature_dropout = 0.0
    torch.testing.assert_close(
        model(x)["click"], model.base.lin(x["x"]) + model.heads["click"](None, x["bias"])
    )


# ---------------------------------------------------------------------------------------------- YAML
def _config(**model: Any) -> dict[str, Any]:
    return {
        "name": "yt",
        "data": {"name": "youtube_log", "train_slates": 60, "val_slates": 10, "test_slates": 10},
        "model": {"name": "shared_bottom", "bottom_dims": [8], "tower_dims": [4], **model},
        "trainer": {"epochs": 1, "batch_size": 128, "device": "cpu"},
    }


@pytest.mark.parametrize(
    ("bias", "message"),
    [
        ({"features": ["rank"], "tasks": ["click"]}, "model.bias_tower.features: ['rank'] are not columns"),
        ({"features": ["position"], "tasks": ["clicks"]}, "model.bias_tower.tasks: 'clicks' is not a task"),
        (
            {"features": ["position"], "tasks": ["click"], "feature_dropout": 1.0},
            "model.bias_tower.feature_dropout",
        ),
        (
            {"features": ["position"], "tasks": ["click"], "width": 3},
            "model.bias_tower.width: unknown parameter",
        ),
        ({"features": ["position"], "tasks": ["click"], "serving": "reference"}, "needs reference"),
    ],
)
def test_yaml_bias_tower_problems_are_reported_by_validate(bias: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_experiment(resolve(_config(bias_tower=bias)))
    assert any(message in p for p in info.value.problems), info.value.problems


def test_yaml_bias_tower_builds_and_trains_with_a_gradient_method_and_a_schedule(tmp_path: Any) -> None:
    from mtlkit.config.build import build_model

    raw = _config(
        bias_tower={"features": ["position", "device"], "tasks": ["click", "watch_time"], "dims": [4]}
    )
    raw["compare"] = {"plain": {"model": {"bias_tower": None}}, "tower": {}}
    experiment = resolve(raw)
    data = check_experiment(experiment)
    splits = next(iter(data.values()))
    plain = build_model(experiment.variants["plain"].model, splits)
    model = build_model(experiment.variants["tower"].model, splits)
    assert not isinstance(plain, BiasTower) and isinstance(model, BiasTower)
    assert model.features == ("device", "position")
    for kwargs in (
        {"aggregator": _pcgrad(splits.tasks), "gradient_target": "representation"},
        {"aggregator": _pcgrad(splits.tasks)},
        {"schedule": "alternating", "per_task_optimizers": True},
    ):
        before = [p.detach().clone() for p in model.heads["click"].parameters()]
        trainer = Trainer(model, splits.tasks, progress=False, device="cpu", **kwargs)
        trainer.fit(splits.train, epochs=1, batch_size=128)
        assert all(math.isfinite(v) for v in trainer.history[-1]["train"].values()), kwargs
        after = list(model.heads["click"].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before)), kwargs  # the tower learns


def _pcgrad(tasks: Any) -> Any:
    from mtlkit.registries import AGGREGATORS

    return AGGREGATORS.build("pcgrad", tasks=tasks)


def _every_method() -> list[tuple[str, str]]:
    from mtlkit.registries import AGGREGATORS, WEIGHTINGS
    from mtlkit.reproduce._base import registered_without_required

    weightings, _ = registered_without_required(WEIGHTINGS)
    aggregators, _ = registered_without_required(AGGREGATORS)
    return [("weighting", n) for n in weightings] + [("aggregator", n) for n in aggregators]


@pytest.mark.parametrize(("family", "name"), _every_method())
def test_every_balancing_method_trains_the_tower_as_its_tasks_parameters(family: str, name: str) -> None:
    from mtlkit.data import MultiTaskDataset
    from mtlkit.registries import AGGREGATORS, WEIGHTINGS

    class Flat(MultiTaskModel):
        task_names = ("click", "watch")

        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(3, 4)
            self.heads_ = nn.ModuleDict({t: nn.Linear(4, 1) for t in self.task_names})

        def _encode(self, x: Any) -> tuple[Tensor, None]:
            return torch.tanh(self.shared(x["x"])), None

        def _decode(self, rep: Tensor, ctx: None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
            return {t: self.heads_[t](rep) for t in self.task_names}, {}

        def task_parameters(self, task: str) -> list[nn.Parameter]:
            return list(self.heads_[task].parameters())

    torch.manual_seed(0)
    tasks = [Task(name="click", kind="binary"), Task(name="watch", kind="regression")]
    model = with_bias_tower(Flat(), tasks=["click", "watch"], input_key="bias", num_bias_features=1, dims=[2])
    n = 64
    pos = torch.randint(0, 5, (n, 1)).float()
    data = MultiTaskDataset(
        {"x": torch.randn(n, 3), "bias": pos},
        {"click": (torch.rand(n) < 1 / (1 + pos.reshape(-1))).float(), "watch": torch.randn(n)},
        tasks=tasks,
    )
    registry = WEIGHTINGS if family == "weighting" else AGGREGATORS
    kwargs = {family: registry.build(name, tasks=tasks)}
    before = [p.detach().clone() for p in model.heads.parameters()]
    trainer = Trainer(model, tasks, progress=False, device="cpu", **kwargs)
    trainer.fit(data, epochs=1, batch_size=32)
    assert all(math.isfinite(v) for v in trainer.history[-1]["train"].values())
    assert any(not torch.equal(a, b) for a, b in zip(model.heads.parameters(), before))
