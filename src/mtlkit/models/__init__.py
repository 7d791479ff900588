"""Multi-task architectures: every model maps inputs to ``{task: output}``; ``forward_parts(x)``
adds the auxiliary losses and the shared representation.

Each architecture is a class that takes modules (use your own experts, towers or
backbones) plus a registered builder that takes sizes, for configs.
"""

from mtlkit.models import backbones
from mtlkit.models._base import ForwardParts, MultiTaskModel, forward_parts
from mtlkit.models._blocks import ACTIVATIONS, MLP, ExpertMLPs, SoftmaxGate, SoftmaxGates, make_activation
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models.aitm import AITM, AdaptiveInformationTransfer, aitm
from mtlkit.models.backbones import BACKBONES, EmbeddingFrontEnd
from mtlkit.models.bias_tower import BiasTower, BiasTowerHead, split_schema, with_bias_tower
from mtlkit.models.cross_stitch import CrossStitch, CrossStitchUnit, cross_stitch
from mtlkit.models.dselect import DSelectK, DSelectKGate, dselect_k
from mtlkit.models.esmm import ESMM, esmm
from mtlkit.models.fusion import FusionTerm, ScoreFusion, fuse
from mtlkit.models.hierarchical import Hierarchical, hierarchical
from mtlkit.models.moe import MMoE, OMoE, mmoe, omoe
from mtlkit.models.mtan import MTAN, mtan
from mtlkit.models.ple import CGC, PLE, ExtractionNetwork, cgc, ple
from mtlkit.models.shared_bottom import SharedBottom, shared_bottom
from mtlkit.models.shared_private import SharedPrivate, shared_private
from mtlkit.models.single_task import SingleTask, single_task
from mtlkit.models.soft_sharing import SoftSharing, soft_sharing
from mtlkit.models.stacked_moe import StackedMMoE, stacked_mmoe
from mtlkit.registries import MODELS

__all__ = [
    "ACTIVATIONS",
    "AITM",
    "BACKBONES",
    "CGC",
    "ESMM",
    "MLP",
    "MODELS",
    "MTAN",
    "PLE",
    "AdaptiveInformationTransfer",
    "BiasTower",
    "BiasTowerHead",
    "CrossStitch",
    "CrossStitchUnit",
    "DSelectK",
    "DSelectKGate",
    "EmbeddingFrontEnd",
    "ExpertMLPs",
    "ExtractionNetwork",
    "ForwardParts",
    "FusionTerm",
    "Hierarchical",
    "InputLayerLike",
    "MMoE",
    "MultiTaskModel",
    "OMoE",
    "ScoreFusion",
    "SharedBottom",
    "SharedPrivate",
    "SingleTask",
    "SoftSharing",
    "SoftmaxGate",
    "SoftmaxGates",
    "StackedMMoE",
    "aitm",
    "backbones",
    "cgc",
    "cross_stitch",
    "dselect_k",
    "esmm",
    "forward_parts",
    "fuse",
    "hierarchical",
    "make_activation",
    "make_input_layers",
    "mmoe",
    "mtan",
    "omoe",
    "ple",
    "shared_bottom",
    "shared_private",
    "single_task",
    "soft_sharing",
    "split_schema",
    "stacked_mmoe",
    "with_bias_tower",
]
