"""ISA query-side encoders: light timm backbones + the adaptive token learner."""
from .atl import AdaptiveTokenLearner
from .backbones import SHIPPED_BACKBONES, SYMMETRIC, BackboneError, check_backbone_name, create_backbone
from .query_encoder import CheckpointError, EncoderConfig, QueryEncoder, shipped_checkpoint, tokens_to_map

__all__ = ["AdaptiveTokenLearner", "SHIPPED_BACKBONES", "SYMMETRIC", "BackboneError", "check_backbone_name",
           "create_backbone", "CheckpointError", "EncoderConfig", "QueryEncoder", "shipped_checkpoint",
           "tokens_to_map"]
