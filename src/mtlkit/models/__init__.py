"""Multi-task architectures: every model maps inputs to ``{task: output}``.

Each architecture is a class that takes modules (use your own experts, towers or
backbones) plus a registered builder that takes sizes, for configs.
"""

from mtlkit.models import backbones
from mtlkit.models._base import MultiTaskModel
from mtlkit.models._blocks import ACTIVATIONS, MLP, ExpertMLPs, SoftmaxGate, SoftmaxGates, make_activation
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models.backbones import BACKBONES, EmbeddingFrontEnd
from mtlkit.models.dselect import DSelectK, DSelectKGate, dselect_k
from mtlkit.models.moe import MMoE, OMoE, mmoe, omoe
from mtlkit.models.ple import CGC, PLE, ExtractionNetwork, cgc, ple
from mtlkit.models.shared_bottom import SharedBottom, shared_bottom
from mtlkit.models.single_task import SingleTask, single_task
from mtlkit.models.stacked_moe import StackedMMoE, stacked_mmoe
from mtlkit.registries import MODELS

__all__ = [
    "ACTIVATIONS",
    "BACKBONES",
    "MLP",
    "MODELS",
    "EmbeddingFrontEnd",
    "ExpertMLPs",
    "InputLayerLike",
    "MMoE",
    "MultiTaskModel",
    "OMoE",
    "SharedBottom",
    "SingleTask",
    "SoftmaxGates",
    "backbones",
    "make_activation",
    "make_input_layers",
    "mmoe",
    "omoe",
    "shared_bottom",
    "single_task",
]
__all__ += [
    "CGC",
    "PLE",
    "DSelectK",
    "DSelectKGate",
    "ExtractionNetwork",
    "SoftmaxGate",
    "StackedMMoE",
    "cgc",
    "dselect_k",
    "ple",
    "stacked_mmoe",
]
