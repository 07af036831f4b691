"""Search spaces: every shipped YAML validates against its method; mistakes are errors."""
from pathlib import Path

import optuna
import pytest
import yaml

from raybench.errors import ConfigError
from raybench.methods import method_names
from raybench.sweep.search_space import SEARCH_SPACE_DIR, decode_params, load_search_space
from raybench.sweep.plan import build_config


def test_every_method_ships_a_valid_search_space():
    for name in method_names():
        space = load_search_space(name)
        assert space.distributions, f"{name}: empty search space"


@pytest.mark.parametrize("path", sorted(SEARCH_SPACE_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_names_a_method_and_samples_valid_configs(path):
    doc = yaml.safe_load(path.read_text())
    space = load_search_space(doc["method"], path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask(fixed_distributions=space.distributions)
        build_config(doc["method"], {"weights": "random"}, decode_params(trial.params), {})


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


def test_unknown_parameter_is_an_error(tmp_path):
    p = _write(tmp_path, "method: patchcore\nparams:\n  coreset_ration: {type: float, low: 0.1, high: 0.2}\n")
    with pytest.raises(ConfigError, match="coreset_ration.*not a parameter"):
        load_search_space("patchcore", p)


def test_mistyped_values_are_errors(tmp_path):
    cases = {
        "params:\n  coreset_ratio: {type: float, low: a, high: 0.2}\n": "coreset_ratio",
        "params:\n  patch_size: {type: float, low: 1.0, high: 3.0}\n": "patch_size",
        "params:\n  coreset_ratio: {type: float, low: 0.5, high: 0.1}\n": "low > high",
        "params:\n  layers: {type: categorical, choices: [layer2]}\n": "layers",
        "params:\n  sigma: {type: gaussian}\n": "unknown type",
        "fixed:\n  batch_size: big\n": "batch_size",
    }
    for body, match in cases.items():
        with pytest.raises(ConfigError, match=match):
            load_search_space("patchcore", _write(tmp_path, "method: patchcore\n" + body))


def test_list_choices_round_trip_through_optuna():
    space = load_search_space("patchcore")
    trial = optuna.create_study().ask(fixed_distributions=space.distributions)
    params = decode_params(trial.params)
    assert isinstance(params["layers"], list)
