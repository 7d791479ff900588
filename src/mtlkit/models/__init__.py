"""Multi-task architectures: every model maps inputs to ``{task: output}``.

Each architecture is a class that takes modules (use your own experts, towers or
backbones) plus a registered builder that takes sizes, for configs.
"""

from mtlkit.models import backbones
from mtlkit.models._base import MultiTaskModel
from mtlkit.models._blocks import ACTIVATIONS, MLP, ExpertMLPs, SoftmaxGates, make_activation
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models.backbones import BACKBONES, EmbeddingFrontEnd
from mtlkit.models.cross_stitch import CrossStitch, CrossStitchUnit, cross_stitch
from mtlkit.models.hierarchical import Hierarchical, hierarchical
from mtlkit.models.moe import MMoE, OMoE, mmoe, omoe
from mtlkit.models.mtan import MTAN, mtan
from mtlkit.models.shared_bottom import SharedBottom, shared_bottom
from mtlkit.models.shared_private import SharedPrivate, shared_private
from mtlkit.models.single_task import SingleTask, single_task
from mtlkit.models.soft_sharing import SoftSharing, soft_sharing
from mtlkit.registries import MODELS

__all__ = [
    "ACTIVATIONS",
    "BACKBONES",
    "MLP",
    "MODELS",
    "MTAN",
    "CrossStitch",
    "CrossStitchUnit",
    "EmbeddingFrontEnd",
    "ExpertMLPs",
    "Hierarchical",
    "InputLayerLike",
    "MMoE",
    "MultiTaskModel",
    "OMoE",
    "SharedBottom",
    "SharedPrivate",
    "SingleTask",
    "SoftSharing",
    "SoftmaxGates",
    "backbones",
    "cross_stitch",
    "hierarchical",
    "make_activation",
    "make_input_layers",
    "mmoe",
    "mtan",
    "omoe",
    "shared_bottom",
    "shared_private",
    "single_task",
    "soft_sharing",
]
