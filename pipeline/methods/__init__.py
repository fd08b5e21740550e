"""SSL methods behind one interface (:class:`pipeline.methods.base.Method`), chosen by ``pretrain.ssl.method``.

Adding a method is one module here (its loss, its modules, its state) and one entry in ``METHODS``.
"""

from __future__ import annotations

from pipeline.config import SSLConfig
from pipeline.errors import UserError
from pipeline.methods.barlow_twins import BarlowTwins, BarlowTwinsLoss
from pipeline.methods.base import Method, StepOutput
from pipeline.methods.byol import BYOL, BYOLLoss
from pipeline.methods.mocov2 import InfoNCELoss, MoCoV2
from pipeline.methods.simclr import NTXentLoss, SimCLR
from pipeline.methods.simsiam import SimSiam, SimSiamLoss
from pipeline.methods.vicreg import VICReg, VICRegLoss
from pipeline.models.encoder import Encoder

METHODS: dict[str, type[Method]] = {m.name: m for m in (SimCLR, BYOL, SimSiam, BarlowTwins, VICReg, MoCoV2)}

__all__ = ["BYOL", "METHODS", "BYOLLoss", "BarlowTwins", "BarlowTwinsLoss", "InfoNCELoss", "Method", "MoCoV2",
           "NTXentLoss", "SimCLR", "SimSiam", "SimSiamLoss", "StepOutput", "VICReg", "VICRegLoss", "build_method"]


def build_method(cfg: SSLConfig, encoder: Encoder) -> Method:
    try:
        cls = METHODS[cfg.method]
    except KeyError:
        raise UserError(f"pretrain.ssl.method: unknown method {cfg.method!r}; choose one of "
                         f"{', '.join(METHODS)}") from None
    return cls(cfg, encoder)
