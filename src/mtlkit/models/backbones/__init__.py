"""Backbones: input layers that turn a dataset's inputs into one ``(N, F)`` feature tensor.

Every backbone is an ``nn.Module`` with an ``out_features`` attribute. Registered builders take
the dataset's ``input_spec`` (see :mod:`mtlkit.data.schema`) plus their own sizes; configs name
them in the ``backbone:`` section, and architectures place them in front of their shared part
(``input_layer=``), or build one per task where nothing is shared (the single-task baseline).
"""

from mtlkit.models.backbones.basic import Flatten, flatten
from mtlkit.models.backbones.cnn import SmallCNN, cnn
from mtlkit.models.backbones.embedding import EmbeddingFrontEnd, embedding
from mtlkit.models.backbones.resnet import BasicBlock, ResNet, resnet
from mtlkit.registries import BACKBONES

__all__ = [
    "BACKBONES",
    "BasicBlock",
    "EmbeddingFrontEnd",
    "Flatten",
    "ResNet",
    "SmallCNN",
    "cnn",
    "embedding",
    "flatten",
    "resnet",
]
