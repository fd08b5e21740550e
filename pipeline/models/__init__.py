"""Backbones, projection heads, and the encoder that wraps them with its input spec."""

from pipeline.models.backbones import build_backbone
from pipeline.models.encoder import ENCODER_FILE, Encoder, EncoderSpec, load_encoder, save_encoder
from pipeline.models.heads import ProjectionHead

__all__ = ["ENCODER_FILE", "Encoder", "EncoderSpec", "ProjectionHead", "build_backbone", "load_encoder", "save_encoder"]
