"""Each method's options are declared once, in its module; the CLIs' option groups come from the
method registry, and run directories written before the grouping still load."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import tyro

from plare_jax.methods import METHODS, rlvlmf
from plare_jax.pipeline import config as config_module
from plare_jax.pipeline.config import ExperimentConfig, MethodOptions, config_from_dict, options_field


@dataclasses.dataclass(frozen=True)
class ToyOptions:
    width: int = 3
    """How wide the toy is."""


def test_a_registered_method_with_options_gets_its_cli_group(monkeypatch):
    toy = types.SimpleNamespace(name="toy-method", default_options=ToyOptions(), options_help="A toy method.",
                                options_for_run=lambda options, *, total_steps: options)
    monkeypatch.setitem(config_module.METHODS, "toy-method", toy)
    cls = config_module._method_options_class()
    assert cls().toy_method == ToyOptions()
    assert tyro.cli(cls, args=["--toy-method.width", "5"]).toy_method.width == 5


def test_every_method_with_options_has_a_field_with_its_defaults():
    defaults = MethodOptions()
    for name, method in METHODS.items():
        if method.default_options is None:
            assert not hasattr(defaults, options_field(name)), name
        else:
            assert getattr(defaults, options_field(name)) == method.default_options, name


def test_rlvlmf_schedule_follows_the_run_budget_through_the_method_not_a_field_name():
    config = dataclasses.replace(ExperimentConfig(), bc_steps=1000, method_steps=2500)
    assert config.method_options("rlvlmf").schedule_steps == 3500
    assert config.methods.rlvlmf.schedule_steps == rlvlmf.QUICK.schedule_steps  # the stored option is unchanged
    assert config.method_options("bc") is None


def test_old_run_directories_with_top_level_method_options_still_load():
    config = dataclasses.replace(
        ExperimentConfig(), methods=dataclasses.replace(MethodOptions(), rlvlmf=dataclasses.replace(rlvlmf.QUICK, batch_size=64)))
    stored = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    assert config_from_dict(stored) == config
    legacy = {k: v for k, v in stored.items() if k != "methods"}
    legacy.update(stored["methods"])  # the layout before the grouping: rlvlmf, pbc, plare, plare_robust at the top
    assert config_from_dict(legacy) == config



def test_the_second_phase_option_is_method_steps_and_its_former_name_still_works(tmp_path):
    """--cpl-steps was the name of every method's second phase; old commands, run directories
    and evidence files keep working under the new name, method_steps."""
    from plare_jax.pipeline import evidence
    from plare_jax.pipeline.offline import OfflineConfig

    for cls, extra in ((ExperimentConfig, []), (OfflineConfig, ["--data", str(tmp_path)])):
        old = tyro.cli(cls, args=["--cpl-steps", "700", *extra])
        new = tyro.cli(cls, args=["--method-steps", "700", *extra])
        assert old.method_steps == new.method_steps == 700 and old == new
    config = dataclasses.replace(ExperimentConfig(), method_steps=700)
    stored = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    stored["cpl_steps"] = stored.pop("method_steps")  # a config.json written before the rename
    assert config_from_dict(stored) == config
    path = tmp_path / "evidence.json"
    old_file = evidence.empty(config)
    old_file["protocol"]["cpl_steps"] = old_file["protocol"].pop("method_steps")
    path.write_text(json.dumps(old_file))
    assert evidence.load(path, config)["protocol"]["method_steps"] == 700
    with pytest.raises(evidence.EvidenceError, match="method_steps: stored 700, now 3000"):
        evidence.load(path, ExperimentConfig())

def test_registered_methods_are_known_inside_the_block_only_even_when_it_fails():
    from plare_jax.methods import get_method, registered
    from plare_jax.methods.plare import PLARE, CPLOptions

    candidate = PLARE(name="candidate-x", description="a search candidate", default_options=CPLOptions(bias=0.25))
    registry = dict(METHODS)
    with pytest.raises(RuntimeError, match="inside"):
        with registered({"candidate-x": candidate}):
            assert get_method("candidate-x") is candidate
            raise RuntimeError("inside")
    assert METHODS == registry
    with pytest.raises(ValueError, match="registered already"):
        with registered({"plare": candidate}):
            pass
    assert METHODS == registry
