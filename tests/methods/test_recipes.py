"""The CIFAR-10 recipes (``make cifar10 METHOD=<m>``): each validates as params, matches the README's table of
solo-learn's values, scales lambda to its head, and becomes ``dvc exp run`` flags; LARS clipping by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import Params, load_params
from pipeline.engine.optim import LARS
from pipeline.models.backbones import build_backbone
from pipeline.models.heads import ProjectionHead
from pipeline.recipes import apply_recipe, dotted, dvc_flags, load_recipe, main, methods
from pipeline.sparsehead import l1_penalty

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["simclr", "byol", "simsiam", "barlow_twins", "vicreg", "mocov2"]
COLUMNS = ["method", "optimiser", "lr", "weight decay", "LARS eta, clip", "momentum", "temperature", "projector",
           "predictor", "target momentum", "other method parameters", "view 1 blur, solarise", "view 2 blur, solarise", "jitter b/c/s/h",
           "crop scale", "source"]
SOURCES = {"simclr": "simclr.yaml", "byol": "byol.yaml", "simsiam": "simsiam.yaml", "barlow_twins": "barlow.yaml",
           "vicreg": "vicreg.yaml", "mocov2": "mocov2plus.yaml"}


def recipe_params(method: str) -> Params:
    """params.yaml with the recipe on top, parsed as the stages parse it."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return Params.model_validate(apply_recipe(raw, load_recipe("cifar10", method)))


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def table_row(method: str) -> list[str]:
    """The README row of ``method``'s recipe, every cell from the validated params."""
    p = recipe_params(method).pretrain
    o, a, own = p.optim, p.augment, p.ssl.section(method)
    views = []
    for view in (0, 1):
        cfg = own.views(a, 32)[view] if hasattr(own, "views") else a
        views.append(f"{_g(cfg.blur_prob)}, {_g(cfg.solarize_prob)}")
    target = getattr(own, "momentum", None)
    final = getattr(own, "final_momentum", None)
    shown = {"momentum", "final_momentum", "temperature", "predictor_hidden_dim", "view_blur", "view_solarize"}
    other = ", ".join(f"{k} {v:g}" for k, v in own.model_dump().items() if k not in shown) or "-"
    return [f"`{method}`", o.name, _g(o.lr), _g(o.weight_decay),
            f"{_g(o.eta)}, {'clip' if o.lars_clip else 'no clip'}" if o.name == "lars" else "-",
            _g(o.momentum), _g(getattr(own, "temperature", None)),
            "-".join(str(d) for d in (*p.head.hidden_dims, p.head.out_dim)) + ("" if p.head.batch_norm else ", no BN"),
            _g(getattr(own, "predictor_hidden_dim", None)),
            "-" if target is None else f"{_g(target)} to {_g(final)}" if final is not None else _g(target),
            other, *views, f"{_g(a.brightness)}/{_g(a.contrast)}/{_g(a.saturation)}/{_g(a.hue)}",
            f"{_g(a.crop_scale[0])}-{_g(a.crop_scale[1])}",
            f"[{SOURCES[method]}](https://github.com/vturrisi/solo-learn/blob/main/scripts/pretrain/cifar/"
            f"{SOURCES[method]})"]


def readme_table() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    header = "| " + " | ".join(COLUMNS) + " |"
    assert header in text, "the README's CIFAR-10 recipe table has other columns"
    rows = text[text.index(header):].splitlines()[2:]
    out = {}
    for row in rows:
        if not row.startswith("|"):
            break
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        out[cells[0].strip("`")] = cells
    return out


def test_there_is_a_recipe_per_method_and_each_validates():
    assert methods("cifar10") == sorted(METHODS)
    for method in METHODS:
        params = recipe_params(method)
        assert params.prepare.source == "cifar10" and params.pretrain.backbone.name == "resnet18"
        assert params.pretrain.ssl.method == method


@pytest.mark.parametrize("method", METHODS)
def test_the_readme_table_gives_each_recipe(method):
    assert readme_table()[method] == table_row(method)


def test_lambda_and_its_range_scale_with_the_heads_l1_at_initialisation():
    """lambda x R(head) at initialisation is the digits default's (1e-3 x R of its 64-256-64 head) within 1.5x,
    and the search range keeps the default's ratios to lambda (1e-2 and 1e2)."""
    digits = load_params(ROOT / "params.yaml")
    _, features = build_backbone("small", 1, digits.pretrain.backbone.width)
    torch.manual_seed(0)
    r_digits = l1_penalty([ProjectionHead(features, digits.pretrain.head.hidden_dims, digits.pretrain.head.out_dim)])
    budget = digits.pretrain.sparsehead.lam * r_digits.item()
    for method in METHODS:
        p = recipe_params(method)
        torch.manual_seed(0)
        r = l1_penalty([ProjectionHead(512, p.pretrain.head.hidden_dims, p.pretrain.head.out_dim)]).item()
        lam = p.pretrain.sparsehead.lam
        assert budget / 1.5 < lam * r < budget * 1.5, method
        assert p.tune.lambda_low == pytest.approx(lam * digits.tune.lambda_low / digits.pretrain.sparsehead.lam)
        assert p.tune.lambda_high == pytest.approx(lam * digits.tune.lambda_high / digits.pretrain.sparsehead.lam)


def test_dvc_flags_carry_every_value_as_yaml(capsys):
    recipe = load_recipe("cifar10", "byol")
    flags = dvc_flags(recipe)
    assert flags[::2] == ["-S"] * (len(flags) // 2)
    parsed = dict(f.split("=", 1) for f in flags[1::2])
    assert {k: yaml.safe_load(v) for k, v in parsed.items()} == dotted(recipe)
    assert parsed["pretrain.optim.weight_decay"] == "1.0e-05"  # PyYAML reads 1e-05 as a string
    assert main(["cifar10", "byol"]) == 0
    assert "'pretrain.ssl.byol.view_solarize=[0.0,0.2]'" in capsys.readouterr().out
    assert main(["cifar10", "nope"]) == 2
    assert re.fullmatch(r"recipes: error: no cifar10 recipe for method 'nope'; there are: barlow_twins, .*\n",
                        capsys.readouterr().err)


@pytest.mark.parametrize(("lr", "scale"), [(1.0, 0.05), (0.01, 1.0)])
def test_lars_clip_caps_the_trust_ratio_over_the_rate(lr, scale):
    """solo-learn's clip_lr: the step is lr * min(trust / lr, 1) * (g + wd w), so min(trust, lr) * (g + wd w)."""
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    opt = LARS([{"params": [w]}], lr=lr, momentum=0.0, weight_decay=0.0, eta=0.1, clip=True)
    w.grad = torch.tensor([[0.0, 10.0]])  # ||g|| = 10: trust = 0.1 * 5 / 10 = 0.05
    opt.step()
    # lr 1: trust / lr = 0.05 < 1, the step is 0.05 * g; lr 0.01: trust / lr = 5, capped at 1: 0.01 * g.
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0 - 10.0 * lr * scale]]))
