"""The interface between the training loop and an SSL method.

The loop (:mod:`pipeline.engine.trainer`) owns the data, the augmentations, the optimiser, the SparseHead
regulariser, checkpoints and distribution; a method owns what makes it that method: its loss, any modules
beyond the encoder (a predictor, a momentum target network), and its per-step state (a queue of
negatives). Everything a method holds is an ``nn.Module`` attribute, parameter or buffer, so its
``state_dict`` is the method's whole state and goes into the checkpoint as it is.

Every step the loop draws two batches of views with :meth:`Method.view_configs`, calls the method on
them, adds ``lambda * R`` to the loss it returns, steps the optimiser over the encoder and
:meth:`Method.trainable_parameters`, then calls :meth:`Method.after_step` (momentum updates, queue
pushes). The encoder (backbone + projection head) is what the registry stores and the service serves; a
method's own modules stay in the checkpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from pipeline.config import AugmentConfig, SSLConfig
from pipeline.engine.distributed import DistContext
from pipeline.models.encoder import Encoder

# The online network as the loop hands it to a method: images -> (backbone h, projection z). Under DDP it
# is the wrapped module, so calling it is what synchronises the encoder's gradients.
OnlineForward = Callable[[Tensor], tuple[Tensor, Tensor]]


def full_precision(t: Tensor) -> torch.autocast:
    """Losses run in float32 even inside the loop's bf16 autocast: logits and correlations need the range."""
    return torch.autocast(t.device.type, enabled=False)


@dataclass
class StepOutput:
    loss: Tensor  # the method's SSL loss, before the SparseHead penalty
    z: Tensor  # the online projections of both views, (2N, D): what the ``activation`` form penalises


def asymmetric_views(augment: AugmentConfig) -> tuple[AugmentConfig, AugmentConfig]:
    """BYOL's two views (Grill et al. 2020, table 6), which Barlow Twins and VICReg reuse: blur always on
    the first and with probability 0.1 on the second, solarisation only on the second (0.2)."""
    return (augment.model_copy(update={"blur_prob": 1.0, "solarize_prob": 0.0}),
            augment.model_copy(update={"blur_prob": 0.1, "solarize_prob": 0.2}))


class Method(nn.Module, ABC):
    """One SSL method. Subclasses set ``name`` and implement :meth:`forward`."""

    name: ClassVar[str]
    # The base rate (per 256 images, SGD) when pretrain.optim.lr is null: what trains stably on the digits
    # default; a method whose loss is steeper overrides it.
    default_lr: ClassVar[float] = 0.3
    # The paper draws its two views differently (:func:`asymmetric_views`); pretrain.ssl.asymmetric_views
    # may turn that off.
    asymmetric: ClassVar[bool] = False

    def __init__(self, cfg: SSLConfig, encoder: Encoder) -> None:
        super().__init__()
        self.cfg = cfg

    def view_configs(self, augment: AugmentConfig) -> tuple[AugmentConfig, AugmentConfig]:
        """The augmentation of each of the two views; symmetric unless the method's paper says otherwise."""
        if self.asymmetric and self.cfg.asymmetric_views:
            return asymmetric_views(augment)
        return augment, augment

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters beyond the encoder that the optimiser steps (a predictor's, say)."""
        return (p for p in self.parameters() if p.requires_grad)

    def penalised_modules(self, include_predictor: bool) -> list[nn.Module]:
        """Modules besides the projection head whose Linear layers SparseHead penalises when asked."""
        return []

    @abstractmethod
    def forward(self, online: OnlineForward, v1: Tensor, v2: Tensor, dist: DistContext) -> StepOutput:
        """The method's loss on one batch of two views, and the online projections of both."""

    @torch.no_grad()
    def after_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        """Called after each optimiser step; ``step`` counts from 1 to ``total_steps`` over the whole run."""
