"""Training throughput of every registered architecture relative to shared-bottom (issue 4, section 5).

Every variant runs ``Trainer.train_step`` (forward, masked task losses, ``mtlkit.backward`` with
equal weighting, Adam step) on one fixed batch; all variants of a table run interleaved in one
process (``time_interleaved_samples``), and each ratio to shared-bottom is the median over the
rounds of the per-round ratio (both timed in the same round), with its interquartile range.

Settings (``--suite``):

* ``flat``: batch 1024 of 128 flat features;
* ``tabular``: batch 1024 through the embedding front end: 20 categorical columns with
  vocabularies of 1000 (embedding width 8) and 10 numeric columns, i.e. 170 features;
* ``images``: MTAN on 3x32x32 images (batch 256) against shared-bottom models on the same
  input: one on MTAN's own convolutional encoder (the same blocks, then global average pooling),
  one on the flatten backbone;
* ``fixes``: the performance fixes of this issue against the code they replaced (kept below as
  ``*Before`` reference variants), in one run.

Sizes are comparable: every expert, column or bottom layer is 64 wide, every tower 32 (see
``FLAT_SPECS``); the MoE family has 8 experts per level.

    python benchmarks/bench_architectures.py [--suite flat tabular images fixes] [--tasks 2 8]
        [--device cuda] [--threads 2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from _timing import time_interleaved_samples
from mtlkit import Task
from mtlkit.aggregation import PCGrad
from mtlkit.data.batch import Batch
from mtlkit.data.schema import FeatureSchema
from mtlkit.models import (
    CGC,
    MLP,
    MTAN,
    CrossStitch,
    DSelectK,
    DSelectKGate,
    EmbeddingFrontEnd,
    MMoE,
    SharedBottom,
)
from mtlkit.models._kernels import stack_experts, tower_outputs
from mtlkit.models.dselect import smooth_step
from mtlkit.registries import BACKBONES, MODELS
from mtlkit.training import Trainer

BATCH = 1024
FLAT_INPUT = 128
NUM_CATEGORICAL, VOCAB, NUM_NUMERIC, EMB_DIM = 20, 1000, 10, 8
IMAGE_SHAPE, IMAGE_BATCH, MTAN_CHANNELS = (3, 32, 32), 256, (16, 32, 64)


def _depths(names: list[str]) -> dict[str, int]:
    """Hierarchical: the first half of the tasks read layer 1, the others layer 2."""
    return {t: 1 if i < len(names) // 2 else 2 for i, t in enumerate(names)}


# builder kwargs per architecture: experts / columns / bottoms 64 wide, towers 32
FLAT_SPECS: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "shared_bottom": lambda names: {"bottom_dims": [64], "tower_dims": [32]},
    "single_task": lambda names: {"hidden_dims": [64, 32]},
    "soft_sharing": lambda names: {"hidden_dims": [64, 32], "penalty": "l2", "strength": 0.01},
    "hierarchical": lambda names: {
        "hidden_dims": [64, 64],
        "tower_dims": [32],
        "task_depths": _depths(names),
    },
    "shared_private": lambda names: {"shared_dims": [64], "private_dims": [32], "tower_dims": [32]},
    "cross_stitch": lambda names: {"hidden_dims": [64, 32], "tower_dims": []},
    "omoe": lambda names: {"num_experts": 8, "expert_dims": [64], "tower_dims": [32]},
    "mmoe": lambda names: {"num_experts": 8, "expert_dims": [64], "tower_dims": [32]},
    "dselect_k": lambda names: {"num_experts": 8, "k": 2, "expert_dims": [64], "tower_dims": [32]},
    "cgc": lambda names: {
        "num_task_experts": 2,
        "num_shared_experts": 4,
        "expert_dims": [64],
        "tower_dims": [32],
    },
    "ple": lambda names: {
        "num_levels": 2,
        "num_task_experts": 2,
        "num_shared_experts": 4,
        "expert_dims": [64],
        "tower_dims": [32],
    },
    "stacked_mmoe": lambda names: {
        "num_levels": 2,
        "num_experts": 8,
        "expert_dims": [64],
        "tower_dims": [32],
    },
    "aitm": lambda names: {"tower_dims": [64, 32]},
    "esmm": lambda names: {"base": {"name": "shared_bottom", "bottom_dims": [64], "tower_dims": [32]}},
}
SIZES = {
    "shared_bottom": "bottom [64], towers [32]",
    "single_task": "per task: MLP [64, 32]",
    "soft_sharing": "per task: MLP [64, 32], L2 coupling",
    "hierarchical": "stack [64, 64], towers [32] at depth 1 / 2",
    "shared_private": "shared [64], private [32] per task, towers [32]",
    "cross_stitch": "columns [64, 32], 2 stitch units",
    "omoe": "8 experts [64], 1 gate, towers [32]",
    "mmoe": "8 experts [64], T gates, towers [32]",
    "dselect_k": "8 experts [64], k=2, towers [32]",
    "cgc": "2 per task + 4 shared experts [64], towers [32]",
    "ple": "2 levels of (2 per task + 4 shared) [64], towers [32]",
    "stacked_mmoe": "2 levels of 8 experts [64], towers [32]",
    "aitm": "towers [64, 32], AIT k=32",
    "esmm": "ESMM over shared_bottom [64] / [32] (3 outputs, 2 trained)",
}
NOT_FLAT = {"mtan": "images only (suite 'images')"}


def tasks_for(arch: str, num_tasks: int) -> list[Task] | None:
    if arch == "esmm":
        if num_tasks != 2:
            return None  # ESMM has exactly two trained outputs
        return [
            Task(name="ctr", kind="binary"),
            Task(name="ctcvr", kind="binary", logits=False),
            Task(name="cvr", kind="binary", logits=False, train=False),
        ]
    return [Task(name=f"t{i}", kind="binary") for i in range(num_tasks)]


def make_inputs(kind: str, n: int, device: str, gen: torch.Generator) -> Any:
    if kind == "flat":
        return torch.randn(n, FLAT_INPUT, generator=gen).to(device)
    if kind == "tabular":
        return {
            "categorical": torch.randint(0, VOCAB, (n, NUM_CATEGORICAL), generator=gen).to(device),
            "numeric": torch.randn(n, NUM_NUMERIC, generator=gen).to(device),
        }
    return torch.randn(n, *IMAGE_SHAPE, generator=gen).to(device)


def make_targets(tasks: list[Task], n: int, device: str, gen: torch.Generator) -> dict[str, Tensor]:
    out = {}
    for t in tasks:
        y = (torch.rand(n, generator=gen) > 0.5).float()
        y[torch.rand(n, generator=gen) < 0.1] = float("nan")  # 10 % missing labels: the masked losses run
        out[t.target_key] = y.to(device)
    return out


def schema() -> FeatureSchema:
    return FeatureSchema(
        categorical=tuple(f"c{i}" for i in range(NUM_CATEGORICAL)),
        cardinalities=(VOCAB,) * NUM_CATEGORICAL,
        numeric=tuple(f"n{i}" for i in range(NUM_NUMERIC)),
    )


def build(arch: str, tasks: list[Task], kind: str) -> nn.Module:
    names = [t.name for t in tasks]
    kwargs = FLAT_SPECS[arch](names)
    if kind == "flat":
        return MODELS.build(arch, input_dim=FLAT_INPUT, tasks=tasks, **kwargs)
    feats = schema()
    return MODELS.build(
        arch, input_dim=None, tasks=tasks, input_layer=lambda: EmbeddingFrontEnd(feats, EMB_DIM), **kwargs
    )


def step_fn(
    model: nn.Module, tasks: list[Task], batch: Batch, device: str, **trainer_kw: Any
) -> Callable[[], None]:
    trainer = Trainer(
        model,
        tasks,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-4),
        device=device,
        progress=False,
        **trainer_kw,
    )

    def step() -> None:
        trainer.train_step(batch)

    return step


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summarise(samples: Mapping[str, list[float]], base: str) -> dict[str, tuple[float, float, float, float]]:
    """``{variant: (median s/step, ratio median, ratio q25, ratio q75)}`` with per-round ratios
    ``base time / variant time`` (throughput relative to ``base``)."""
    out = {}
    for name, ts in samples.items():
        ratios = sorted(b / t for b, t in zip(samples[base], ts))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out[name] = (statistics.median(ts), q[1], q[0], q[2])
    return out


# ops that only make views or allocate: no kernel of their own on an accelerator
_NO_KERNEL = {
    "aten::view",
    "aten::_unsafe_view",
    "aten::reshape",
    "aten::t",
    "aten::transpose",
    "aten::expand",
    "aten::as_strided",
    "aten::select",
    "aten::slice",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::permute",
    "aten::alias",
    "aten::unbind",
    "aten::split",
    "aten::split_with_sizes",
    "aten::narrow",
    "aten::detach",
    "aten::empty",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::lift_fresh",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::is_nonzero",
    "aten::result_type",
    "aten::to",
    "aten::_reshape_alias",
}


def cost(fn: Callable[[], None]) -> tuple[float, int]:
    """``(FLOPs, compute ops)`` of one training step: matrix-product / convolution FLOPs (forward
    and backward, ``torch.utils.flop_counter``) and the number of outermost aten ops (forward, loss and
    backward; not views or allocations, not the optimizer, whose count depends on its foreach /
    fused mode): a proxy for the kernel launches of a step on an accelerator."""
    with FlopCounterMode(display=False) as counter:
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()

    def counted(e: Any) -> bool:  # an outermost aten op, outside the optimizer
        if not e.name.startswith("aten::") or e.name in _NO_KERNEL:
            return False
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith(("aten::", "Optimizer.")):
                return False
            p = p.cpu_parent
        return True

    return float(counter.get_total_flops()), sum(1 for e in prof.events() if counted(e))


def print_table(
    title: str,
    rows: Mapping[str, tuple[float, float, float, float]],
    params: Mapping[str, int],
    sizes: Mapping[str, str],
    costs: Mapping[str, tuple[float, int]],
    batch: int,
) -> None:
    base = next(iter(rows))
    print(f"\n{title}\n")
    print(
        "| architecture | sizes | params | MFLOP/step (vs first) | ops/step | ms/step | samples/s "
        f"| throughput vs {base} (IQR) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, (t, r, lo, hi) in rows.items():
        flops, ops = costs[name]
        print(
            f"| {name} | {sizes.get(name, '')} | {params[name]:,} | {flops / 1e6:,.0f} ({flops / costs[base][0]:.1f}x) "
            f"| {ops} | {1e3 * t:.2f} | {batch / t:,.0f} | {r:.2f}x ({lo:.2f}-{hi:.2f}) |"
        )


def run_flat_or_tabular(kind: str, num_tasks: int, args: argparse.Namespace) -> None:
    gen = torch.Generator().manual_seed(0)
    x = make_inputs(kind, BATCH, args.device, gen)
    fns, params = {}, {}
    registered = [m for m in MODELS.names() if m not in NOT_FLAT]
    missing = sorted(set(registered) - set(FLAT_SPECS))
    if missing:
        raise SystemExit(
            f"bench_architectures has no sizes for the registered models {missing}; add them to FLAT_SPECS."
        )
    order = ["shared_bottom"] + [m for m in FLAT_SPECS if m != "shared_bottom" and m in registered]
    skipped = []
    for arch in order:
        tasks = tasks_for(arch, num_tasks)
        if tasks is None:
            skipped.append(arch)
            continue
        torch.manual_seed(0)
        model = build(arch, tasks, kind)
        batch = Batch(x, make_targets(tasks, BATCH, args.device, gen))
        fns[arch] = step_fn(model, tasks, batch, args.device)
        params[arch] = n_params(model)
    samples = time_interleaved_samples(
        fns, steps=args.steps, repeats=args.repeats, warmup=args.warmup, device=args.device
    )
    what = (
        f"{FLAT_INPUT} flat features"
        if kind == "flat"
        else f"{NUM_CATEGORICAL} categorical columns (vocabulary {VOCAB}, embedding {EMB_DIM}) "
        f"+ {NUM_NUMERIC} numeric, embedding front end"
    )
    print_table(
        f"### {kind}: {what}, batch {BATCH}, {num_tasks} binary tasks",
        summarise(samples, "shared_bottom"),
        params,
        SIZES,
        {k: cost(fn) for k, fn in fns.items()},
        BATCH,
    )
    if skipped:
        print(f"\n(not run with {num_tasks} tasks: {', '.join(skipped)}; esmm has exactly 2 trained outputs)")


class ConvEncoder(nn.Module):
    """MTAN's shared encoder alone (the same blocks, max pooling between them), then global
    average pooling: the shared-bottom baseline on the same convolutional backbone."""

    def __init__(self, mtan: MTAN) -> None:
        super().__init__()
        self.blocks = copy.deepcopy(mtan.blocks)
        self.out_features = mtan.blocks[-1].out_channels

    def forward(self, x: Tensor) -> Tensor:
        for j, block in enumerate(self.blocks):
            x = block(x)[1]
            if j < len(self.blocks) - 1:
                x = F.max_pool2d(x, 2)
        return x.mean(dim=(2, 3))


def run_images(num_tasks: int, args: argparse.Namespace) -> None:
    gen = torch.Generator().manual_seed(0)
    x = make_inputs("images", IMAGE_BATCH, args.device, gen)
    tasks = tasks_for("mtan", num_tasks)
    assert tasks is not None
    batch = Batch(x, make_targets(tasks, IMAGE_BATCH, args.device, gen))
    torch.manual_seed(0)
    mtan = MODELS.build("mtan", input_spec=IMAGE_SHAPE, tasks=tasks, channels=MTAN_CHANNELS)
    width = MTAN_CHANNELS[-1]
    conv_sb = SharedBottom(
        nn.Identity(), {t.name: MLP(width, (), t.output_dim) for t in tasks}, input_layer=ConvEncoder(mtan)
    )
    flat_sb = MODELS.build(
        "shared_bottom",
        input_dim=None,
        tasks=tasks,
        bottom_dims=[64],
        tower_dims=[32],
        input_layer=BACKBONES.build("flatten", input_spec=IMAGE_SHAPE),
    )
    base = "shared_bottom (MTAN's encoder)"
    variants = {base: conv_sb, "mtan": mtan, "shared_bottom (flatten backbone)": flat_sb}
    sizes = {
        base: f"conv blocks {list(MTAN_CHANNELS)} + global average pooling, linear heads",
        "mtan": f"the same encoder, per task: attention + f block at each of {len(MTAN_CHANNELS)} blocks, linear heads",
        "shared_bottom (flatten backbone)": "3072 flat features, bottom [64], towers [32]",
    }
    fns = {k: step_fn(m, tasks, batch, args.device) for k, m in variants.items()}
    params = {k: n_params(m) for k, m in variants.items()}
    samples = time_interleaved_samples(
        fns, steps=args.steps, repeats=args.repeats, warmup=args.warmup, device=args.device
    )
    print_table(
        f"### images: {'x'.join(map(str, IMAGE_SHAPE))}, batch {IMAGE_BATCH}, {num_tasks} binary tasks "
        f"(ratios to the shared-bottom on MTAN's encoder)",
        summarise(samples, base),
        params,
        sizes,
        {k: cost(fn) for k, fn in fns.items()},
        IMAGE_BATCH,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--suite",
        nargs="+",
        default=["flat", "tabular", "images", "fixes"],
        choices=["flat", "tabular", "images", "fixes"],
    )
    ap.add_argument("--tasks", nargs="+", type=int, default=[2, 8])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, device={args.device}, "
        f"threads={torch.get_num_threads()}, repeats={args.repeats} x {args.steps} steps"
    )
    for suite in args.suite:
        for T in args.tasks:
            if suite in ("flat", "tabular"):
                run_flat_or_tabular(suite, T, args)
            elif suite == "images":
                run_images(T, args)
        if suite == "fixes":
            run_fixes(args)


# ---------------------------------------------------------------------------------------------
# The code the fixes replaced, kept as reference variants (copied from the previous version)


class MMoEBefore(MMoE):
    """MMoE.forward as it was: each tower reads ``mixed[:, i]`` (a select per task, whose backward
    fills a zero ``(N, T, D)`` tensor per task)."""

    def _forward(self, x: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        h = self._features(x)
        mixed = torch.bmm(self.gate(h), stack_experts(self.experts, h))
        return {t: self.towers[t](mixed[:, i]) for i, t in enumerate(self.task_names)}, {}


class TwoPassMixin:
    """The representation path with the input layer evaluated again for decoding (twice in all), as
    the Trainer did."""

    def _encode(self, x: Any) -> tuple[Tensor, Any]:
        return super()._encode(x)[0], x  # type: ignore[misc]

    def _decode(self, rep: Tensor, x: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return super()._decode(rep, self._features(x))  # type: ignore[misc]


class MMoETwoPass(TwoPassMixin, MMoE):
    pass


class CGCTwoPass(TwoPassMixin, CGC):
    pass


class DSelectKTwoPass(TwoPassMixin, DSelectK):
    pass


def prod_selector_outputs(z: Tensor, codes: Tensor, gamma: float) -> Tensor:
    """The selectors as they were: ``prod()`` over the bits (its backward checks for zeros: a host sync)."""
    s = smooth_step(z, gamma).unsqueeze(-2)
    return torch.where(codes, s, 1 - s).prod(-1)


class DSelectKGateBefore(DSelectKGate):
    def combine(self, z: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        selectors = prod_selector_outputs(z, self.codes, self.gamma)
        weights = torch.einsum("...k,...kn->...n", torch.softmax(alpha, dim=-1), selectors)
        return weights, selectors


class DSelectKBefore(DSelectK):
    """DSelect-k forward as it was: per-task slices of the batched gates, per-task regularisers,
    towers on ``mixed[:, i]``, selectors through ``prod()`` (with DSelectKGateBefore gates)."""

    def _pairs(self, h: Tensor) -> list[tuple[Tensor, Tensor]]:
        gates: list[DSelectKGate] = [self.task_gates[t] for t in self.task_names]  # type: ignore[misc]
        first = gates[0]
        T, k, m = len(gates), first.k, first.num_bits
        zw = torch.cat([g.z.weight for g in gates])  # type: ignore[union-attr]
        zb = torch.cat([g.z.bias for g in gates])  # type: ignore[union-attr]
        aw = torch.cat([g.alpha.weight for g in gates])  # type: ignore[union-attr]
        ab = torch.cat([g.alpha.bias for g in gates])  # type: ignore[union-attr]
        z = F.linear(h, zw, zb).reshape(h.shape[0], T, k, m)
        alpha = F.linear(h, aw, ab).reshape(h.shape[0], T, k)
        w, sel = first.combine(z, alpha)
        return [(w[:, i], sel[:, i]) for i in range(T)]

    def _aux_before(self, task: str, selectors: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if self.entropy_reg > 0:
            entropy = -(selectors * torch.log(selectors + 1e-6)).sum((-2, -1))
            out[f"dselect_entropy/{task}"] = self.entropy_reg * entropy.mean()
        return out  # 8 experts, a power of two: no unreachable-code term

    def _forward(self, x: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        h = self._features(x)
        experts = stack_experts(self.experts, h)
        pairs = self._pairs(h)
        w = torch.stack([g.expand(experts.shape[0], -1) for g, _ in pairs], dim=1)
        mixed = torch.bmm(w, experts)
        out = {t: self.towers[t](mixed[:, i]) for i, t in enumerate(self.task_names)}
        aux: dict[str, Tensor] = {}
        if self.training:
            for t, (_, sel) in zip(self.task_names, pairs):
                aux.update(self._aux_before(t, sel))
        return out, aux


class CrossStitchBefore(CrossStitch):
    """Cross-stitch forward as it was: the representation path, one row mix per task."""

    def _forward(self, x: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return self._decode(*self._encode(x))


class SharedBottomBatched(SharedBottom):
    """Shared-bottom with its towers batched (the accelerator default) on any device."""

    def _forward(self, x: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        rep = self._encode(x)[0]
        return tower_outputs(self.towers, dict.fromkeys(self.task_names, rep), batched=True), {}


def as_class(model: nn.Module, cls: type) -> nn.Module:
    """The same model (same parameters) run by ``cls``'s code."""
    model.__class__ = cls
    return model


def saturate(model: DSelectK) -> DSelectK:
    """Scale the selector logits' weights so that most smooth-steps sit at exactly 0 or 1, as after
    training (DSelect-k's entropy regulariser drives them there)."""
    with torch.no_grad():
        for g in model.task_gates.values():
            g.z.weight.mul_(300.0)
    return model


def _no_check(model: nn.Module) -> nn.Module:
    model.input_layer.check_indices = False  # type: ignore[union-attr]
    return model


def _dselect_before(model: nn.Module) -> nn.Module:
    for g in model.task_gates.values():  # type: ignore[union-attr]
        g.__class__ = DSelectKGateBefore
    return as_class(model, DSelectKBefore)


def _same(model: nn.Module) -> nn.Module:
    return model


Variant = Callable[[nn.Module], nn.Module]
# (change, inputs, architecture, the "before" variant, the "after" variant, Trainer kwargs)
FIXES: list[tuple[str, str, str, Variant, Variant, dict[str, Any]]] = [
    (
        "MMoE forward: towers on unbind views instead of per-task selects",
        "flat",
        "mmoe",
        lambda m: as_class(m, MMoEBefore),
        _same,
        {},
    ),
    (
        "DSelect-k forward: selector product without prod(), towers on unbind views",
        "flat",
        "dselect_k",
        _dselect_before,
        _same,
        {},
    ),
    (
        "the same, saturated selectors (exact 0/1, as after training)",
        "flat",
        "dselect_k",
        lambda m: _dselect_before(saturate(m)),  # type: ignore[arg-type]
        saturate,  # type: ignore[dict-item]
        {},
    ),
    (
        "cross-stitch forward: one final mix for all tasks",
        "flat",
        "cross_stitch",
        lambda m: as_class(m, CrossStitchBefore),
        _same,
        {},
    ),
    *(
        (
            f"{arch}: input layer once per step (PCGrad, gradient_target={target})",
            "tabular",
            arch,
            lambda m, cls=cls: as_class(m, cls),
            _same,
            {"aggregator": PCGrad(), "gradient_target": target},
        )
        for arch, cls in (("mmoe", MMoETwoPass), ("cgc", CGCTwoPass), ("dselect_k", DSelectKTwoPass))
        for target in ("representation", "parameters")
    ),
    (
        "shared-bottom towers: loop (the CPU default) -> batched (the accelerator default)",
        "flat",
        "shared_bottom",
        _same,
        lambda m: as_class(m, SharedBottomBatched),
        {},
    ),
    (
        "embedding front end: index check (one host sync) -> check_indices=False",
        "tabular",
        "shared_bottom",
        _same,
        _no_check,
        {},
    ),
]


def run_fixes(args: argparse.Namespace) -> None:
    """Every fix against the code it replaced, each pair interleaved in its own run."""
    gen = torch.Generator().manual_seed(0)
    print("\n### fixes: each change against the code it replaced (or the alternative), interleaved\n")
    print(
        "| change | inputs | tasks | ops/step before -> after | before ms/step | after ms/step | speed-up (IQR) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for num_tasks in args.tasks:
        for change, kind, arch, before, after, kw in FIXES:
            tasks = tasks_for(arch, num_tasks)
            assert tasks is not None
            batch = Batch(
                make_inputs(kind, BATCH, args.device, gen), make_targets(tasks, BATCH, args.device, gen)
            )
            fns = {}
            for name, variant in (("before", before), ("after", after)):
                torch.manual_seed(0)  # the same weights in both
                trainer_kw = {k: copy.deepcopy(v) for k, v in kw.items()}
                fns[name] = step_fn(
                    variant(build(arch, tasks, kind)), tasks, batch, args.device, **trainer_kw
                )
            samples = time_interleaved_samples(
                fns, steps=args.steps, repeats=args.repeats, warmup=args.warmup, device=args.device
            )
            t0, t1 = statistics.median(samples["before"]), statistics.median(samples["after"])
            _, r, lo, hi = summarise(samples, "before")["after"]
            ops = f"{cost(fns['before'])[1]} -> {cost(fns['after'])[1]}"
            print(
                f"| {change} | {kind} | {num_tasks} | {ops} | {1e3 * t0:.2f} | {1e3 * t1:.2f} "
                f"| {r:.2f}x ({lo:.2f}-{hi:.2f}) |"
            )
        towers_alone(num_tasks, args)


def towers_alone(num_tasks: int, args: argparse.Namespace) -> None:
    """The shared-bottom's towers alone (forward and backward, no loss, no optimizer): loop vs
    batched, the measurement behind ``batch_towers``."""
    torch.manual_seed(0)
    towers = {f"t{i}": MLP(64, (32,), 1).to(args.device) for i in range(num_tasks)}
    rep = torch.randn(BATCH, 64, device=args.device, requires_grad=True)

    def run(batched: bool) -> Callable[[], None]:
        def fn() -> None:
            out = list(tower_outputs(towers, dict.fromkeys(towers, rep), batched=batched).values())
            torch.autograd.backward(out, [torch.ones_like(o) for o in out])

        return fn

    fns = {"before": run(False), "after": run(True)}
    samples = time_interleaved_samples(
        fns, steps=5 * args.steps, repeats=args.repeats, warmup=args.warmup, device=args.device
    )
    t0, t1 = statistics.median(samples["before"]), statistics.median(samples["after"])
    _, r, lo, hi = summarise(samples, "before")["after"]
    print(
        f"| towers [32] on 64 features alone, forward + backward: loop -> batched | - | {num_tasks} | - "
        f"| {1e3 * t0:.2f} | {1e3 * t1:.2f} | {r:.2f}x ({lo:.2f}-{hi:.2f}) |"
    )


if __name__ == "__main__":
    main()
