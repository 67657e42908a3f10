"""KerasHub-style models; importing this package wires the classes to the preset table."""

from vishwam_keras.models import presets
from vishwam_keras.models.backbone import VishwamBackbone
from vishwam_keras.models.tokenizer import VishwamTokenizer

VishwamTokenizer.backbone_cls = VishwamBackbone
presets.register(VishwamBackbone)
