"""The prediction MLP of BYOL and SimSiam, and what the loop needs to know about it."""

from __future__ import annotations

from torch import nn

from pipeline.models.encoder import Encoder
from pipeline.models.heads import ProjectionHead


def build_predictor(encoder: Encoder, hidden: int) -> ProjectionHead:
    """Linear-BN-ReLU-Linear from and to the projection's size (both papers' predictor).

    Args:
        encoder: the online encoder; its projection size is the predictor's input and output size.
        hidden: the hidden width.

    Returns:
        The predictor, (N, D) -> (N, D).
    """
    return ProjectionHead(encoder.projection_dim, [hidden], encoder.projection_dim, batch_norm=True)


class PredictorMixin:
    """A method with a ``predictor``: the optimiser steps it (it requires grad, so the base
    ``trainable_parameters`` has it) and SparseHead's l1 form penalises it when
    ``pretrain.sparsehead.include_predictor`` is true."""

    predictor: ProjectionHead

    def penalised_modules(self, include_predictor: bool) -> list[nn.Module]:
        """``[predictor]`` when ``include_predictor``, else none."""
        return [self.predictor] if include_predictor else []
