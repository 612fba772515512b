"""Every config group matches its registry both ways: a registered estimator, backbone, dataset
or prior has a config file, every config file names a registered one (its ``name`` is its file
stem), and the estimator and backbone configs instantiate. The one ``Registry`` they all use, and
``check_choice``."""

import importlib.resources
import re

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from diffsort_reorder.backbones import BACKBONES, create_backbone, list_backbones
from diffsort_reorder.data import DATASETS, list_datasets
from diffsort_reorder.orders.priors import PRIORS
from diffsort_reorder.orders.scans import ORDERINGS
from estimators import create_estimator, list_estimators
from estimators._checks import check_choice
from estimators.registry import ESTIMATORS, Registry

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


def test_a_registry_warns_when_a_name_is_taken_and_names_what_exists_when_unknown():
    things = Registry("thing")
    first = things.register("b")(lambda: 1)
    assert things.register("a", int) is int and things.register("b", first) is first  # no warning
    with pytest.warns(UserWarning, match=r"thing 'b' is already registered \(.*<lambda>\); str "):
        things.register("b", str)
    assert things["b"] is str and things.lookup("a") is int
    with pytest.raises(ValueError, match=r"^unknown thing 'c'; available things: a, b$"):
        things.lookup("c")
    with pytest.raises(TypeError, match="'name' should be a non-empty str but got ''"):
        things.register("")
    scans = Registry("scan order", "orders")
    with pytest.raises(ValueError, match=r"^unknown scan order 'c'; available orders: $"):
        scans.create("c")


def test_a_registry_is_a_mapping_in_registration_order_and_lists_names_sorted():
    things = Registry("thing", set_name=True)
    for name in ("z", "a", "m"):
        things.register(name)(type(name.upper(), (), {}))
    assert list(things) == ["z", "a", "m"] and things.names() == ["a", "m", "z"]
    assert "a" in things and "b" not in things and len(things) == 3 and things["a"].name == "a"
    assert things.create("a").__class__ is things["a"]
    copy = things.copy()
    copy.register("b", type("B", (), {}))
    assert "b" in copy and "b" not in things  # a scratch copy leaves the original alone
    with pytest.raises(KeyError):
        things["b"]  # noqa: B018 (a mapping's missing key)


def test_create_drops_none_options():
    made = Registry("factory")
    made.register("pair", lambda a=1, b=2: (a, b))
    assert made.create("pair", a=None, b=5) == (1, 5)


@pytest.mark.parametrize(
    "registry",
    [ESTIMATORS, BACKBONES, ORDERINGS, DATASETS, PRIORS],
    ids=lambda r: r.kind,
)
def test_every_registry_of_the_suite_is_one_registry(registry):
    list_backbones()  # registers the backbones, which load lazily
    assert isinstance(registry, Registry) and registry.names() == sorted(registry)
    with pytest.raises(ValueError, match=rf"^unknown {registry.kind} 'nope'; available .*: "):
        registry.lookup("nope")


@pytest.mark.parametrize(
    ("value", "ok"), [("b", True), ("d", False), (None, False), (["a"], False)]
)
def test_check_choice_names_the_argument_and_the_choices(value, ok):
    if ok:
        assert check_choice("mode", value, ("a", "b", "c")) == value
        return
    message = f"'mode' should be one of a, b, c but got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_choice("mode", value, ("a", "b", "c"))
