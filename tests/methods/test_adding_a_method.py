"""A seventh method from outside ``pipeline/``: its own parameters, one registry line, trained for an epoch
(README, "Adding a method")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import Field
from torch import Tensor, nn

from pipeline.config import ConfigError, MethodParams, load_params
from pipeline.engine.distributed import DistContext
from pipeline.engine.trainer import train
from pipeline.methods import METHODS, Method, method_class, register_method, unregister_method
from pipeline.models.encoder import Encoder


class AlignUniformLoss(nn.Module):
    """Wang & Isola (2020): ``||z1 - z2||^2`` of unit vectors, plus ``weight * log mean exp(-2 ||zi - zj||^2)``
    over the batch (uniformity, which keeps the embeddings from collapsing)."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        align = (z1 - z2).pow(2).sum(dim=1).mean()
        uniform = torch.pdist(torch.cat([z1, z2])).pow(2).mul(-2).exp().mean().log()
        return align + self.weight * uniform


class AlignUniformParams(MethodParams):
    weight: float = Field(1.0, gt=0.0)


class AlignUniform(Method[AlignUniformParams]):
    name = "align_uniform"
    params_model = AlignUniformParams

    def __init__(self, params: AlignUniformParams, encoder: Encoder) -> None:
        super().__init__(params, encoder)
        self.loss = AlignUniformLoss(params.weight)


@pytest.fixture
def registered():
    register_method(AlignUniform)  # the one registry line (here a call; in pipeline/methods a decorator)
    yield
    unregister_method(AlignUniform.name)


def write_params(tmp_path: Path, ssl: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"pretrain": {
        "ssl": ssl, "backbone": {"name": "small", "width": 8}, "head": {"hidden_dims": [32], "out_dim": 16},
        "epochs": 1, "batch_size": 64, "num_threads": 1, "sparsehead": {"lambda": 0.0}}}))
    return path


def test_a_method_from_a_test_module_trains_for_an_epoch(registered, digits, tmp_path):
    params = load_params(write_params(tmp_path, {"method": "align_uniform", "align_uniform": {"weight": 2.0}}))
    assert params.pretrain.ssl.section("align_uniform") == AlignUniformParams(weight=2.0)
    result = train(params.pretrain, digits[:256], seed=0, progress=False)
    assert isinstance(result.method, AlignUniform) and result.method.loss.weight == 2.0
    assert len(result.history) == 1 and torch.isfinite(torch.tensor(result.history[0]["loss_ssl"]))
    # The loss is the method's: at the trained encoder, a batch's loss is what AlignUniformLoss gives.
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        result.encoder.train()
        out = result.method(result.encoder.forward_both, x, x.flip(-1), DistContext())
        z = result.encoder.project(torch.cat([x, x.flip(-1)]))
    torch.testing.assert_close(out.loss, AlignUniformLoss(2.0)(*z.chunk(2)))


def test_its_parameters_are_checked_and_its_name_is_valid_only_while_registered(registered, tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain\.ssl\.align_uniform\.wieght: Extra inputs"):
        load_params(write_params(tmp_path, {"method": "align_uniform", "align_uniform": {"wieght": 2.0}}))
    with pytest.raises(ConfigError, match=r"pretrain\.ssl\.align_uniform\.weight: Input should be greater"):
        load_params(write_params(tmp_path, {"method": "align_uniform", "align_uniform": {"weight": 0.0}}))
    assert method_class("align_uniform") is AlignUniform and "align_uniform" in METHODS
    with pytest.raises(ValueError, match="already registered"):
        register_method(type("Other", (AlignUniform,), {}))
    unregister_method("align_uniform")
    with pytest.raises(ConfigError, match=r"pretrain\.ssl\.method: unknown method 'align_uniform'; choose one of"):
        load_params(write_params(tmp_path, {"method": "align_uniform"}))


def test_old_flat_keys_name_their_new_place(tmp_path):
    for key, place in [("barlow_lambda", "pretrain.ssl.barlow_twins.lambda_offdiag"),
                       ("vicreg_invariance", "pretrain.ssl.vicreg.invariance"),
                       ("moco_queue_size", "pretrain.ssl.mocov2.queue_size"),
                       ("temperature", "pretrain.ssl.simclr.temperature, pretrain.ssl.mocov2.temperature")]:
        with pytest.raises(ConfigError) as err:
            load_params(write_params(tmp_path, {"method": "simclr", key: 1.0}))
        assert str(err.value) == (f"{tmp_path / 'params.yaml'}: pretrain.ssl.{key}: each method has its own "
                                  f"section now; this key moved to {place}")
    with pytest.raises(ConfigError, match=r"pretrain\.ssl\.nope: not a registered method"):
        load_params(write_params(tmp_path, {"method": "simclr", "nope": {}}))
    for shadowing in ("method", "section", "model_dump", "not an identifier"):
        with pytest.raises(ValueError, match="must be a Python identifier"):
            register_method(type("Bad", (AlignUniform,), {"name": shadowing}))
    assert "method" not in METHODS and "section" not in METHODS


def test_the_names_a_method_may_not_take_are_every_name_of_ssl_config() -> None:
    # The registry lists SSLConfig's own names (it cannot import the config that imports it): the list
    # must follow the class.
    from pydantic import BaseModel

    from pipeline.config import SSLConfig
    from pipeline.methods.registry import SSL_CONFIG_NAMES

    own = {n for n in dir(SSLConfig) if not n.startswith("_") and not hasattr(BaseModel, n)}
    own |= set(SSLConfig.model_fields)
    assert own == SSL_CONFIG_NAMES
