"""Configs are data: a case file calls only factories the user registered or explicitly trusts."""

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import tailguard as tg
from tailguard.cli import app
from tailguard.io import load_case
from tailguard.models import registered_models

CASE = """
[model]
factory = {factory!r}
kwargs = {kwargs}

[distribution]
kind = "gaussian"
mean = [0.0, 0.0]
std = 1.0

[spec]
kind = "output_above"
index = 0
threshold = 1.0

[estimate]
method = "mc"
budget = 500
"""


def case(tmp_path: Path, factory: str, kwargs: str = "{}") -> Path:
    path = tmp_path / "case.toml"
    path.write_text(CASE.format(factory=factory, kwargs=kwargs))
    return path


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    """A file that hostile code would create; its absence shows nothing ran."""
    return tmp_path / "ran"


@pytest.fixture()
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable folder; modules written there are forgotten after the test."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name, module in list(sys.modules.items()):
        if str(folder) in str(getattr(module, "__file__", None)):
            del sys.modules[name]


# factory -> kwargs (TOML) that would create the marker file if the factory were called
HOSTILE = {
    "os:system": "{{ command = 'touch {marker}' }}",
    "posix:system": "{{ command = 'touch {marker}' }}",
    "builtins:eval": "{{ source = \"open('{marker}', 'w')\" }}",
    "builtins:exec": "{{ source = \"open('{marker}', 'w')\" }}",
    "subprocess:run": "{{ args = ['touch', '{marker}'] }}",
    "subprocess:Popen": "{{ args = ['touch', '{marker}'] }}",
    "pathlib:Path.touch": "{{ self = '{marker}' }}",
    "tailguard.models:torch.save": "{{ obj = 1, f = '{marker}' }}",
    "os": "{{}}",
    "importlib:import_module": "{{ name = 'antigravity' }}",
}


@pytest.mark.parametrize("factory", sorted(HOSTILE))
def test_hostile_factory_runs_nothing_and_says_how_to_allow(tmp_path, marker, factory):
    path = case(tmp_path, factory, HOSTILE[factory].format(marker=marker))
    with pytest.raises(tg.ConfigError) as info:
        load_case(path)
    message = str(info.value)
    assert not marker.exists(), f"{factory} ran"
    assert str(path) in message and "model.factory" in message
    assert repr(factory) in message
    assert "register_model" in message and "entry point" in message and "--trust-module" in message


def test_a_module_is_never_imported_for_its_side_effects(tmp_path, marker, module_dir):
    (module_dir / "side_effect_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef make(): pass\n")
    with pytest.raises(tg.ConfigError, match="'side_effect_mod:make' is not a registered"):
        load_case(case(tmp_path, "side_effect_mod:make"))
    assert not marker.exists() and "side_effect_mod" not in sys.modules


def test_the_cli_refuses_a_hostile_config_with_exit_2(tmp_path, marker):
    path = case(tmp_path, "os:system", f"{{ command = 'touch {marker}' }}")
    result = CliRunner().invoke(app, ["estimate", "--config", str(path)])
    assert result.exit_code == 2 and not marker.exists()
    assert "'os:system' is not a registered model factory" in result.stderr
    assert "Traceback" not in result.output


def test_builtin_factories_are_registered():
    assert {"tailguard.models:mlp", "tailguard.models:linear", "tailguard.models:digits_classifier"} <= set(
        registered_models()
    )


def test_a_decorated_factory_can_be_named(tmp_path):
    @tg.register_model("test-safety-tiny")
    def tiny(width: int) -> nn.Module:
        return nn.Linear(2, width)

    est = load_case(case(tmp_path, "test-safety-tiny", "{ width = 1 }")).estimate()
    assert est.n_model_calls == 500


def test_registering_a_taken_name_for_another_factory_is_refused():
    @tg.register_model("test-safety-taken")
    def first() -> nn.Module:
        return nn.Linear(2, 1)

    def second() -> nn.Module:
        return nn.Linear(2, 1)

    with pytest.raises(tg.InvalidArgumentError, match="already registered"):
        tg.register_model("test-safety-taken")(second)
    with pytest.raises(tg.InvalidArgumentError, match="non-empty name"):
        tg.register_model("")


def test_a_trusted_module_lends_its_own_public_functions_only(tmp_path, module_dir):
    (module_dir / "trusted_nets.py").write_text(
        textwrap.dedent(
            """
            from os import system
            from torch import nn

            def small(width=1):
                return nn.Linear(2, width)

            def _private():
                return nn.Linear(2, 1)
            """
        )
    )
    trust = ["trusted_nets"]
    est = load_case(case(tmp_path, "trusted_nets:small"), trust_modules=trust).estimate()
    assert est.n_model_calls == 500
    for name, why in [
        ("trusted_nets:system", "defined in posix, not in the trusted module"),
        ("trusted_nets:nn", "is not callable"),
        ("trusted_nets:_private", "only a public function"),
        ("trusted_nets:nn.Linear", "without a dotted attribute path"),
    ]:
        with pytest.raises(tg.ConfigError, match=why):
            load_case(case(tmp_path, name), trust_modules=trust)
    with pytest.raises(tg.ConfigError, match="not a registered"):
        load_case(case(tmp_path, "trusted_nets:small"))  # trust is per call, not remembered


def test_trust_modules_must_be_a_list_of_names(tmp_path):
    with pytest.raises(tg.ConfigError, match="trust_modules must be a list"):
        load_case(case(tmp_path, "x:y"), trust_modules="os")


def test_the_cli_trusts_a_module_only_when_told(tmp_path, module_dir):
    (module_dir / "cli_nets.py").write_text("from torch import nn\ndef net():\n    return nn.Linear(2, 1)\n")
    path = case(tmp_path, "cli_nets:net")
    runner = CliRunner()
    refused = runner.invoke(app, ["estimate", "--config", str(path), "--json"])
    assert refused.exit_code == 2 and "--trust-module cli_nets" in refused.stderr
    trusted = runner.invoke(app, ["estimate", "--config", str(path), "--json", "--trust-module", "cli_nets"])
    assert trusted.exit_code == 0, trusted.output
    assert tg.Estimate.from_json(trusted.stdout).n_model_calls == 500


def _install_entry_points(folder: Path, entries: dict[str, str]) -> None:
    """A fake installed distribution declaring ``tailguard.models`` entry points."""
    info = folder / "fake_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-models\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[tailguard.models]\n{lines}")


def test_an_entry_point_is_loaded_only_by_its_own_name(tmp_path, marker, module_dir):
    (module_dir / "ep_nets.py").write_text("from torch import nn\ndef net():\n    return nn.Linear(2, 1)\n")
    (module_dir / "ep_other.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef net(): pass\n")
    _install_entry_points(module_dir, {"fake-net": "ep_nets:net", "other-net": "ep_other:net"})
    case_path = case(tmp_path, "fake-net")
    est = load_case(case_path).estimate()
    assert est.n_model_calls == 500
    assert "ep_nets" in sys.modules and "ep_other" not in sys.modules and not marker.exists()
    assert "other-net" in registered_models() and not marker.exists()


def test_a_factory_that_makes_no_module_is_named(tmp_path):
    @tg.register_model("test-safety-not-a-module")
    def not_a_module() -> object:
        return torch.zeros(1)

    with pytest.raises(tg.ConfigError, match="returned Tensor, not a torch.nn.Module"):
        load_case(case(tmp_path, "test-safety-not-a-module"))
