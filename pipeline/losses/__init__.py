"""SSL objectives, one module per method."""

from pipeline.losses.ntxent import NTXentLoss

__all__ = ["NTXentLoss", "build_ssl_loss"]


def build_ssl_loss(method: str, temperature: float) -> NTXentLoss:
    if method == "simclr":
        return NTXentLoss(temperature)
    raise ValueError(f"unknown SSL method {method!r}")
