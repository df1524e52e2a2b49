"""Backends: where the model's forward passes run. Ray in local mode, one small cluster for the module."""

from __future__ import annotations

import math
import sys
import threading
from statistics import NormalDist

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import tailguard as tg
from tailguard.backends import RayBackend, resolve_backend
from tailguard.cli import app

from .test_cli import CASE
from .test_tokens import case as token_case


def mlp(seed: int = 0) -> nn.Module:
    """A small 3-output net on 4-dim inputs; under N(0, I) its output 0 exceeds 0.7 with p about 4e-4."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))


GAUSSIAN = tg.Gaussian(torch.zeros(4), std=1.0)
FAR_CLASS = tg.OutputAbove(0, 0.7)  # rare enough that is and splitting go through their stages


def test_an_unknown_backend_names_the_choices() -> None:
    with pytest.raises(tg.InvalidArgumentError, match=r"\['local', 'ray'\]"):
        tg.estimate(mlp(), GAUSSIAN, FAR_CLASS, method="mc", budget=100, backend="dask")
    with pytest.raises(tg.InvalidArgumentError, match="backend must be"):
        resolve_backend(3)  # type: ignore[arg-type]
    with pytest.raises(tg.InvalidArgumentError, match="shards must be a positive int"):
        RayBackend(shards=0)


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail as if it were not installed
    with pytest.raises(tg.MissingExtraError, match=r"tailguard\[ray\]"):
        tg.estimate(mlp(), GAUSSIAN, FAR_CLASS, method="mc", budget=100, backend="ray")


class FakeRay:
    """Records how ``connect`` starts or joins Ray."""

    def __init__(self, initialized: bool) -> None:
        self.initialized, self.inits = initialized, []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs) -> None:
        self.inits.append(kwargs)

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize(
    "initialized, address, inits, shut_down_at_exit",
    [
        (True, "ray://elsewhere:10001", [], False),  # ray.init(address=...) already called: theirs
        (False, "10.0.0.1:6379", [{}], False),  # RAY_ADDRESS: ray.init() joins it, theirs
        (False, None, [{"address": "local", "include_dashboard": False, "logging_level": "WARNING"}], True),
    ],
)
def test_connect_joins_the_users_cluster_and_shuts_down_only_its_own(
    monkeypatch: pytest.MonkeyPatch, initialized, address, inits, shut_down_at_exit
) -> None:
    from tailguard.backends import ray as ray_backend

    fake, registered = FakeRay(initialized), []
    monkeypatch.setattr(ray_backend, "_ray", lambda: fake)
    monkeypatch.setattr(ray_backend.atexit, "register", registered.append)
    if address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", address)
    assert ray_backend.connect() is fake
    assert fake.inits == inits
    assert registered == ([fake.shutdown] if shut_down_at_exit else [])


ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def backend():
    """One local Ray of 2 CPUs and the backend ``backend="ray"`` names, for every test here.

    It takes one worker per CPU, so its 2 workers are those of every test (each start costs seconds).
    """
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield RayBackend.shared()
    RayBackend.shared().close()
    if started:
        ray.shutdown()


#: P[output 0 > 0.7] of mlp() under N(0, I): plain sampling, 4e6 draws, seed 1 (interval -3.538, -3.489)
FAR_CLASS_LOG10_P = -3.514


@pytest.mark.parametrize("method, budget", [("mc", 100_000), ("is", 20_000), ("splitting", 20_000)])
def test_sharded_runs_repeat_exactly_and_find_what_in_process_runs_find(
    backend: RayBackend, method: str, budget: int
) -> None:
    model = mlp()
    # 99.9 % intervals: the reference below must lie inside both runs' intervals, which hold 95 % ones
    # only 95 % of the time (seed 3's sharded mc saw 17 catastrophes where 31 are expected)
    run = {"method": method, "budget": budget, "seed": 3, "confidence": 0.999}
    first = tg.estimate(model, GAUSSIAN, FAR_CLASS, **run, backend=backend)
    again = tg.estimate(model, GAUSSIAN, FAR_CLASS, **run, backend=backend)
    local = tg.estimate(model, GAUSSIAN, FAR_CLASS, **run)
    for same in ("log10_p", "ci_log10", "diagnostics", "n_model_calls"):
        assert getattr(first, same) == getattr(again, same)
    assert first.settings["backend"] == {"name": "ray", "shards": 2, "threads_per_worker": 1}
    assert "backend" not in local.settings
    # the workers draw from seeds of their own, so the draws differ from in-process ones: both
    # runs must find the same probability, each interval holding the plain-sampling reference
    assert local.n_model_calls * 0.9 <= first.n_model_calls <= budget
    for est in (first, local):
        low, high = est.ci_log10
        assert low < FAR_CLASS_LOG10_P < high
        assert abs(est.log10_p - FAR_CLASS_LOG10_P) < 0.3
    assert "forward" not in vars(model)  # the model is handed back as it came


def test_plain_sampling_draws_on_the_workers_and_counts_their_calls_here(backend: RayBackend) -> None:
    dist = tg.Gaussian(torch.zeros(4), std=1.0)
    drawn_here: list[int] = []
    draw = dist.sample
    dist.sample = lambda n, generator: drawn_here.append(n) or draw(n, generator)  # type: ignore[method-assign]
    est = tg.estimate(mlp(), dist, FAR_CLASS, method="mc", budget=30_001, seed=0, backend=backend)
    assert drawn_here == []  # every draw was made by a worker's copy of D
    assert est.n_model_calls == est.diagnostics["draws"] == 30_001
    tg.estimate(mlp(), dist, FAR_CLASS, method="mc", budget=1_000, seed=0)
    assert drawn_here == [1_000]  # in process, D draws here


def test_a_conditioned_d_shards_its_terms_and_repeats_exactly(backend: RayBackend) -> None:
    from tailguard.bench.conditioned import independent

    case = independent(1e-6, 1e-3, dim=4)
    model, dist, spec = case.build()
    first = tg.estimate(model, dist, spec, budget=60_000, seed=0, backend=backend)
    again = tg.estimate(model, dist, spec, budget=60_000, seed=0, backend=backend)
    assert (first.log10_p, first.ci_log10) == (again.log10_p, again.ci_log10)
    assert first.ci_log10[0] <= case.log10_truth <= first.ci_log10[1]
    assert abs(first.log10_p - case.log10_truth) < 0.3


def test_tsis_on_token_inputs_repeats_exactly_and_agrees(backend: RayBackend) -> None:
    model, dist, spec, _ = token_case(2, 2, 0.1, 4)
    first = tg.estimate(model, dist, spec, "tsis", budget=4096, seed=5, backend=backend)
    again = tg.estimate(model, dist, spec, "tsis", budget=4096, seed=5, backend=backend)
    local = tg.estimate(model, dist, spec, "tsis", budget=4096, seed=5)
    assert (first.log10_p, first.ci_log10) == (again.log10_p, again.ci_log10)
    assert first.log10_p == pytest.approx(local.log10_p, abs=1e-6)


def test_only_passes_without_autograd_leave_the_process(backend: RayBackend) -> None:
    model = mlp()
    local_rows: list[int] = []
    model[0].register_forward_hook(lambda _m, args, _out: local_rows.append(args[0].shape[0]))
    x = torch.randn(10, 4)
    expected = model(x).detach()
    local_rows.clear()
    with backend.serving(model):
        with torch.no_grad():
            sharded = model(x)
        assert local_rows == []  # computed by the workers' copies
        with_grad = model(x)
        assert local_rows == [10] and with_grad.requires_grad
    torch.testing.assert_close(sharded, expected)
    assert "forward" not in vars(model)


def test_nan_outputs_from_a_worker_are_a_model_output_error(backend: RayBackend) -> None:
    model = mlp()
    with torch.no_grad():
        model[2].bias[1] = float("nan")
    with pytest.raises(tg.ModelOutputError, match="NaN or inf"):
        tg.estimate(model, GAUSSIAN, FAR_CLASS, method="mc", budget=1_000, backend=backend)


def test_a_model_failing_in_a_worker_says_where_without_a_remote_traceback(backend: RayBackend) -> None:
    model = nn.Sequential(nn.Linear(5, 3))  # the inputs have 4 dims
    failure = r"in Ray worker 1 of 2: the model failed on inputs of shape \(500, 4\).*mat1 and mat2"
    with pytest.raises(tg.ShapeMismatchError, match=failure) as info:
        tg.estimate(model, GAUSSIAN, FAR_CLASS, method="mc", budget=1_000, backend=backend)
    assert "Traceback" not in str(info.value)
    assert "forward" not in vars(model)


def test_a_model_that_does_not_pickle_or_a_second_model_at_once_is_refused(backend: RayBackend) -> None:
    model = mlp()
    model.lock = threading.Lock()  # type: ignore[assignment]
    with pytest.raises(tg.UnsupportedError, match="does not pickle"):
        tg.estimate(model, GAUSSIAN, FAR_CLASS, method="mc", budget=100, backend=backend)
    with backend.serving(mlp()), pytest.raises(tg.UnsupportedError, match="already serves another model"):
        tg.estimate(mlp(), GAUSSIAN, FAR_CLASS, method="mc", budget=100, backend=backend)


def test_the_estimate_command_takes_a_backend_and_refuses_a_misspelt_one(
    backend: RayBackend, tmp_path
) -> None:
    case_file = tmp_path / "case.toml"
    case_file.write_text(CASE)
    args = ["estimate", "-c", str(case_file), "--json", "--budget", "3000"]
    bad = CliRunner().invoke(app, [*args, "--backend", "dask"])
    assert bad.exit_code == 2 and "['local', 'ray']" in bad.output
    sharded = CliRunner().invoke(app, [*args, "--backend", "ray"])
    assert sharded.exit_code == 0, sharded.output
    local = CliRunner().invoke(app, args)
    est, reference = tg.Estimate.from_json(sharded.stdout), tg.Estimate.from_json(local.stdout)
    assert est.settings["backend"]["name"] == "ray"
    truth = math.log10(NormalDist().cdf(-1.0))  # the case's linear margin over N(0, I): Phi(-1)
    for found in (est, reference):
        assert found.ci_log10[0] < truth < found.ci_log10[1]
