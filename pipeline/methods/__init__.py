"""SSL methods behind one interface (:class:`pipeline.methods.base.Method`), chosen by ``pretrain.ssl.method``.

A method is one module here whose class is decorated with ``@register_method``, and one import line below
(README, "Adding a method").
"""

from __future__ import annotations

# The registry: importing a module registers its method.
from pipeline.methods.barlow_twins import BarlowTwins, BarlowTwinsLoss
from pipeline.methods.base import Method, StepOutput
from pipeline.methods.byol import BYOL, BYOLLoss
from pipeline.methods.mocov2 import InfoNCELoss, MoCoV2
from pipeline.methods.registry import METHODS, build_method, method_class, register_method, unregister_method
from pipeline.methods.simclr import NTXentLoss, SimCLR
from pipeline.methods.simsiam import SimSiam, SimSiamLoss
from pipeline.methods.vicreg import VICReg, VICRegLoss

__all__ = ["BYOL", "METHODS", "BYOLLoss", "BarlowTwins", "BarlowTwinsLoss", "InfoNCELoss", "Method", "MoCoV2",
           "NTXentLoss", "SimCLR", "SimSiam", "SimSiamLoss", "StepOutput", "VICReg", "VICRegLoss", "build_method",
           "method_class", "register_method", "unregister_method"]
