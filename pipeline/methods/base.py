"""The interface between the training loop and an SSL method (README, "SSL methods" and "Adding a method")."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from pipeline.config import AugmentConfig, MethodParams
from pipeline.engine.distributed import DistContext, gather_with_grad
from pipeline.models.encoder import Encoder

# The online network as the loop hands it to a method: images -> (backbone h, projection z). Under DDP it
# is the wrapped module, so calling it is what synchronises the encoder's gradients.
OnlineForward = Callable[[Tensor], tuple[Tensor, Tensor]]

P = TypeVar("P", bound=MethodParams)


def full_precision(t: Tensor) -> torch.autocast:
    """A context in which ``t``'s device computes in float32 even inside the loop's bf16 autocast.

    Losses need the range: logits, correlations and covariances overflow or lose their small terms in bf16.
    """
    return torch.autocast(t.device.type, enabled=False)


@dataclass
class StepOutput:
    """What a method returns for one step.

    Attributes:
        loss: the method's SSL loss, a scalar, before the SparseHead penalty.
        z: the online projections of both views, (2N, D), view 1 first: what the ``activation`` form
            penalises.
    """

    loss: Tensor
    z: Tensor


class AsymmetricViewParams(MethodParams):
    """Parameters of a method whose paper draws its two views differently (BYOL's views)."""

    asymmetric_views: bool = True  # false: both views are pretrain.augment


def asymmetric_views(augment: AugmentConfig) -> tuple[AugmentConfig, AugmentConfig]:
    """BYOL's two views (Grill et al. 2020, table 6), which Barlow Twins and VICReg reuse.

    Blur always on the first view and with probability 0.1 on the second; solarisation only on the
    second (0.2); everything else is ``augment``.

    Args:
        augment: the ``pretrain.augment`` section.

    Returns:
        The configs of view 1 and view 2.
    """
    return (augment.model_copy(update={"blur_prob": 1.0, "solarize_prob": 0.0}),
            augment.model_copy(update={"blur_prob": 0.1, "solarize_prob": 0.2}))


class Method(nn.Module, Generic[P]):
    """One SSL method: its loss, its modules beyond the encoder and its per-step state.

    The loop (:mod:`pipeline.engine.trainer`) owns the data, the views' augmentation, the optimiser,
    SparseHead, checkpoints and distribution. Every step it draws two batches of views with the
    augmentations of :meth:`view_configs`, calls the method (:meth:`forward`), adds the SparseHead penalty
    to the loss, steps the optimiser over the encoder and :meth:`trainable_parameters`, then calls
    :meth:`after_step`. Everything a method holds is a module, parameter or buffer, so its ``state_dict``
    is its whole state and the checkpoint holds it as it is.

    A subclass sets ``name`` and ``params_model``, builds its modules in ``__init__`` and either sets
    ``self.loss`` to a loss of the two views' projections (the default :meth:`step_loss`) or overrides
    :meth:`step_loss`; ``@register_method`` makes it selectable.

    Args:
        params: the method's own parameters, ``pretrain.ssl.<name>``, an instance of ``params_model``.
        encoder: the online encoder (backbone + projection head); a method may copy it (a target network)
            or read its sizes, but the loop owns and steps it.
    """

    name: ClassVar[str]
    params_model: ClassVar[type[MethodParams]] = MethodParams
    # The base rate (per 256 images, SGD) when pretrain.optim.lr is null: what trains stably on the
    # digits default; a method whose loss is steeper overrides it.
    default_lr: ClassVar[float] = 0.3
    # A loss of the two views' projections, (N, D) each -> scalar: what the default step_loss calls.
    loss: nn.Module

    def __init__(self, params: P, encoder: Encoder) -> None:
        super().__init__()
        self.params = params

    def view_configs(self, augment: AugmentConfig) -> tuple[AugmentConfig, AugmentConfig]:
        """The augmentation of each of the two views: :func:`asymmetric_views` for a method whose parameters
        derive from :class:`AsymmetricViewParams` (unless its ``asymmetric_views`` is false), else
        ``augment`` for both.

        Args:
            augment: the ``pretrain.augment`` section.

        Returns:
            The configs of view 1 and view 2.
        """
        if isinstance(self.params, AsymmetricViewParams) and self.params.asymmetric_views:
            return asymmetric_views(augment)
        return augment, augment

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters beyond the encoder's that the optimiser steps (a predictor's, say)."""
        return (p for p in self.parameters() if p.requires_grad)

    def penalised_modules(self, include_predictor: bool) -> list[nn.Module]:
        """Modules besides the projection head whose Linear layers SparseHead's l1 form penalises.

        Args:
            include_predictor: ``pretrain.sparsehead.include_predictor``.
        """
        return []

    def forward(self, online: OnlineForward, v1: Tensor, v2: Tensor, dist: DistContext) -> StepOutput:
        """The loss of one step on two batches of views.

        Both views go through the online network as one batch: one DDP forward per step, and batch norm
        normalises them together. The loss is then :meth:`step_loss`.

        Args:
            online: the online network, images -> (h, z).
            v1: the first views, (N, C, S, S) in [0, 1].
            v2: the second views of the same images, in the same order.
            dist: the process group (a single process has ``enabled`` false).

        Returns:
            The loss and the online projections of both views, (2N, D).
        """
        x = torch.cat([v1, v2])
        _, z = online(x)
        return StepOutput(self.step_loss(x, z, dist), z)

    def step_loss(self, x: Tensor, z: Tensor, dist: DistContext) -> Tensor:
        """The method's loss given the views and their online projections.

        The default is ``self.loss(z1, z2)`` in float32 on the two views' projections, gathered from every
        rank with their gradient (SimCLR, Barlow Twins and VICReg compute their loss on the global batch).

        Args:
            x: both views, (2N, C, S, S), view 1 first (a target network projects them again).
            z: their online projections, (2N, D).
            dist: the process group.

        Returns:
            The scalar loss.
        """
        with full_precision(z):
            z1, z2 = z.float().chunk(2)
            return self.loss(gather_with_grad(z1, dist), gather_with_grad(z2, dist))

    @torch.no_grad()
    def after_step(self, encoder: Encoder, step: int, total_steps: int) -> None:
        """Called after each optimiser step: momentum updates, queue pushes.

        Args:
            encoder: the online encoder, just stepped.
            step: this step's number, from 1 to ``total_steps`` over the whole run.
            total_steps: the run's number of optimiser steps.
        """
