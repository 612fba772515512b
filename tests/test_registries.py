"""Every config group matches its registry both ways: a registered estimator, backbone, dataset
or prior has a config file, every config file names a registered one (its ``name`` is its file
stem), and the estimator and backbone configs instantiate."""

import importlib.resources

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from diffsort_reorder.backbones import create_backbone, list_backbones
from diffsort_reorder.data import list_datasets
from diffsort_reorder.priors import PRIORS
from estimators import create_estimator, list_estimators

CONFIGS = importlib.resources.files("diffsort_reorder.configs")
N = 16  # tokens of a 4x4 grid


def group(name: str) -> dict[str, DictConfig]:
    """The config files of group ``name``, by file stem."""
    files = [f for f in CONFIGS.joinpath(name).iterdir() if f.name.endswith(".yaml")]
    return {f.name.removesuffix(".yaml"): OmegaConf.create(f.read_text()) for f in files}


@pytest.mark.parametrize(
    ("name", "registry"),
    [
        ("estimator", list_estimators),
        ("backbone", list_backbones),
        ("data", list_datasets),
        ("prior", lambda: list(PRIORS)),
    ],
)
def test_config_group_matches_its_registry(name, registry):
    configs = group(name)
    assert sorted(configs) == sorted(registry())
    for stem, cfg in configs.items():
        assert cfg.name == stem, f"configs/{name}/{stem}.yaml names {cfg.name!r}"
        assert "options" in cfg, f"configs/{name}/{stem}.yaml has no 'options' block"


@pytest.mark.parametrize("name", list_estimators())
def test_every_estimator_config_instantiates(name):
    cfg = group("estimator")[name]
    options = OmegaConf.to_container(cfg.options, resolve=True) or {}
    extra = {"dim": 8} if name == "saliency" else {}
    est = create_estimator(name, num_tokens=N, **extra, **options)
    assert est.name == name and est.num_tokens == N
    assert torch.equal(est.eval().order(), torch.arange(N))  # starts at row_major by default


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_config_instantiates(name):
    cfg = group("backbone")[name]
    options = OmegaConf.to_container(cfg.options, resolve=True) or {}
    model = create_backbone(name, size=cfg.size, num_tokens=N, num_classes=3, **options).eval()
    logits = model(torch.randn(2, N, model.dim))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
