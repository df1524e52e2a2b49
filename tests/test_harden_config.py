"""tailguard harden --config: a user's own model, data, spec and family from a TOML file."""

import json

from safetensors.torch import save_file
from typer.testing import CliRunner

import tailguard as tg
from tailguard.cli import app
from tailguard.io import load_harden_run

from ._toy_backdoor import toy_task

runner = CliRunner()
TRUST = ["--trust-module", "tests._toy_backdoor"]

SETTINGS = ("{ steps = 4, extra_steps = 0, pool_size = 2, candidates = 9, samples = 32, eval_every = 2, "
            "eval_budget = 2000, "
            'eval_method = "mc", held_out = 1, batch_size = 32, checkpoint_every = 2, judge_budget = 2000, '
            'judge_sampling_budget = 2000, judge_attack_budget = 6000, judge_attack_method = "mc" }')


def write_run(folder, factory="tests._toy_backdoor:trigger_model", settings=SETTINGS, family=None):
    (x, y), patches = toy_task()
    save_file({"inputs": x.float().contiguous(), "labels": y}, str(folder / "train.safetensors"))
    save_file({"images": patches.base.float().contiguous()}, str(folder / "bases.safetensors"))
    family = family or 'kind = "patch"\npatch_size = 2\nnoise_std = 0.05'
    text = f"""
[model]
factory = "{factory}"

[train]
points = "train.safetensors"

[spec]
kind = "class_is"
k = 1

[family]
{family}

[deployment]
kind = "noisy_empirical"
points = "bases.safetensors"
noise_std = 0.05

[harden]
seed = 3
settings = {settings}
"""
    path = folder / "run.toml"
    path.write_text(text)
    return path


def test_harden_config_trains_the_users_model_and_writes_the_report(tmp_path):
    path = write_run(tmp_path)
    run = load_harden_run(path, trust_modules=["tests._toy_backdoor"])
    assert isinstance(run.family, tg.PatchFamily) and run.family.patch_size == 2 and run.seed == 3
    assert run.train[0].shape == (128, 4, 4) and run.deployment is not None
    out = tmp_path / "out"
    result = runner.invoke(app, ["harden", "--config", str(path), "--trust-module", "tests._toy_backdoor",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 3 and len(report["steps"]) == 4 and report["settings"]["pool_size"] == 2
    assert "deployment" in report["verdict"]["distributions"]
    assert (out / "model.safetensors").is_file()


def test_harden_config_refuses_untrusted_factories_and_bad_settings_by_name(tmp_path):
    untrusted = write_run(tmp_path, factory="os:system")
    result = runner.invoke(app, ["harden", "--config", str(untrusted), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "model.factory" in result.output
    misspelt = write_run(tmp_path, settings="{ stepz = 3 }")
    result = runner.invoke(app, ["harden", "--config", str(misspelt), *TRUST])
    assert result.exit_code == 2 and "harden.settings" in result.output and "stepz" in result.output
    bad_family = write_run(tmp_path, family='kind = "patch"\npatch_size = 0\nnoise_std = 0.05')
    result = runner.invoke(app, ["harden", "--config", str(bad_family), *TRUST])
    assert result.exit_code == 2 and "family.patch_size" in result.output
    assert not (tmp_path / "o").exists()
