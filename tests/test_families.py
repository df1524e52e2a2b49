"""Families GaussianShift, PerturbationBall and FlowFamily: exact KLs, projections, densities, attacks."""

import math

import pytest
import torch
from scipy import optimize, stats

import tailguard as tg
from tailguard.families import FlowDistribution, FlowFamily, GaussianShift, PerturbationBall
from tailguard.families.flow import flow_forward, flow_inverse
from tailguard.families.shift import gaussian_shift_kl

SMALL_ATTACK = {"candidates": 16, "restarts": 2, "steps": 25, "samples": 256}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _cov(d, seed=0):
    a = torch.randn(d, d, generator=_gen(seed), dtype=torch.float64)
    return a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)


def _full_base(d=3):
    return tg.Gaussian(torch.linspace(-1, 1, d, dtype=torch.float64), cov=_cov(d))


def _gaussian_kl(p, q):
    """KL(p || q) between tailguard Gaussians from their means and covariances (textbook form)."""
    mp, mq = p.moments().means[0], q.moments().means[0]
    sp, sq = p.covariance(), q.covariance()
    sq_inv = torch.linalg.inv(sq)
    diff = mq - mp
    kl = torch.trace(sq_inv @ sp) + diff @ sq_inv @ diff - len(mp) + torch.logdet(sq) - torch.logdet(sp)
    return 0.5 * float(kl.detach())


def _kl(family, params):
    return float(family.kl(params).detach())


def _linear(w):
    model = torch.nn.Linear(w.numel(), 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w.reshape(1, -1))
    return model


# --- GaussianShift ---------------------------------------------------------------------------
def test_shift_kl_closed_form_matches_textbook_and_monte_carlo():
    base = _full_base()
    family = GaussianShift(base, max_kl=10.0)
    params = family.params_at(torch.tensor([0.8, -0.5, 0.3]), log_scale=0.2)
    member = family.member(params)
    closed = _kl(family, params)
    assert closed == pytest.approx(_gaussian_kl(member, base), rel=1e-9)
    x = member.sample(200_000, _gen(1))
    with torch.no_grad():
        log_ratio = member.log_prob(x) - base.log_prob(x)
    se = float(log_ratio.std()) / math.sqrt(len(log_ratio))
    assert abs(float(log_ratio.mean()) - closed) < 4 * se


@pytest.mark.parametrize("scale", [True, False])
def test_shift_project_bounds_kl_and_is_idempotent(scale):
    base = tg.Gaussian(torch.zeros(4, dtype=torch.float64), std=torch.tensor([0.5, 1.0, 2.0, 3.0]))
    family = GaussianShift(base, max_kl=1.5, scale=scale)
    for seed in range(5):
        g = _gen(seed)
        shift, log_scale = 3 * torch.randn(4, generator=g), float(torch.randn(1, generator=g))
        params = family.params_at(shift, log_scale)
        assert _kl(family, params) > 1.5
        # the member is already inside the ball before project is ever called
        assert _gaussian_kl(family.member(params), base) <= 1.5 + 1e-9
        family.project(params)
        assert 1.5 * (1 - 1e-9) <= _kl(family, params) <= 1.5
        assert _gaussian_kl(family.member(params), base) == pytest.approx(1.5, rel=1e-8)
        once = {k: v.detach().clone() for k, v in params.items()}
        family.project(params)
        assert all(torch.equal(once[k], params[k]) for k in params)
    small = torch.full((4,), 0.1, dtype=torch.float64)
    inside = family.params_at(small)
    family.project(inside)
    assert torch.equal(inside["shift"].detach(), small)


def test_shift_candidates_sit_on_the_boundary_and_the_gradient_there_is_tangential():
    family = GaussianShift(_full_base(), max_kl=2.0)
    for params in family.candidates(8, _gen(0)):
        assert _kl(family, params) == pytest.approx(2.0, rel=1e-9)
        shift, log_scale = family.projected(params)
        value = gaussian_shift_kl(shift, log_scale, 3)
        grads = torch.autograd.grad(value, [params["shift"], params["log_scale"]])
        assert max(float(g.abs().max()) for g in grads) < 1e-8  # the KL is constant along the sphere


def test_attack_over_gaussian_shift_finds_the_weight_direction():
    d, max_kl = 12, 2.0
    w = torch.randn(d, generator=_gen(3), dtype=torch.float64)
    threshold = 4.3 * float(w.norm())  # base p = Phi(-4.3), about 1e-5
    family = GaussianShift(tg.Gaussian(torch.zeros(d, dtype=torch.float64)), max_kl=max_kl, scale=False)
    att = tg.attack(
        _linear(w), tg.OutputAbove(0, threshold), family, budget=60_000, seed=0, method="mc", **SMALL_ATTACK
    )
    delta = torch.tensor(family.describe(att.params)["delta"], dtype=torch.float64)
    assert float(delta @ w / (delta.norm() * w.norm())) > 0.98
    best = stats.norm.logsf(4.3 - math.sqrt(2 * max_kl)) / math.log(10)  # |delta| = sqrt(2 KL) along w
    assert abs(att.estimate.log10_p - best) < 0.2


def test_attack_over_gaussian_shift_with_scale_reaches_the_optimal_tradeoff():
    d, max_kl, a = 4, 2.0, 4.3
    w = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    family = GaussianShift(tg.Gaussian(torch.zeros(d, dtype=torch.float64)), max_kl=max_kl)

    def neg_log_p(log_s):  # the rest of the KL budget goes to a shift along w
        left = max_kl - 0.5 * d * (math.expm1(2 * log_s) - 2 * log_s)
        return -stats.norm.logsf((a - math.sqrt(2 * max(left, 0.0))) / math.exp(log_s))

    best = -optimize.minimize_scalar(neg_log_p, bounds=(-0.5, 0.7), method="bounded").fun / math.log(10)
    spec = tg.OutputAbove(0, a * float(w.norm()))
    att = tg.attack(_linear(w), spec, family, budget=60_000, seed=0, method="mc", **SMALL_ATTACK)
    assert att.estimate.log10_p > best - 0.2
    assert att.estimate.ci_log10[0] < best + 0.05  # nothing in the family beats the optimum


# --- PerturbationBall ------------------------------------------------------------------------
def test_ball_project_linf_clips_each_entry():
    family = PerturbationBall(torch.zeros(3, 2, 2), epsilon=0.5, noise_std=0.1)
    params = family.params_at(torch.tensor([[0.9, -0.2], [-3.0, 0.5]], dtype=torch.float64))
    family.project(params)
    clipped = torch.tensor([[0.5, -0.2], [-0.5, 0.5]], dtype=torch.float64)
    assert torch.equal(params["delta"].detach(), clipped)
    once = params["delta"].detach().clone()
    family.project(params)
    assert torch.equal(params["delta"].detach(), once)
    for c in family.candidates(10, _gen(0)):
        assert float(c["delta"].detach().abs().max()) <= 0.5 and c["delta"].requires_grad


def test_ball_project_l2_rescales_onto_the_sphere():
    family = PerturbationBall(torch.zeros(3, 4), epsilon=1.0, noise_std=0.1, norm="l2")
    params = family.params_at(torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=torch.float64))
    family.project(params)
    assert torch.allclose(params["delta"].detach(), torch.tensor([0.6, 0.0, 0.8, 0.0], dtype=torch.float64))
    once = params["delta"].detach().clone()
    family.project(params)
    assert torch.equal(params["delta"].detach(), once)
    inside = family.params_at(torch.tensor([0.1, 0.2, 0.0, 0.0], dtype=torch.float64))
    family.project(inside)
    assert torch.allclose(inside["delta"].detach(), torch.tensor([0.1, 0.2, 0.0, 0.0], dtype=torch.float64))
    norms = [float(c["delta"].detach().norm()) for c in family.candidates(20, _gen(0))]
    assert max(norms) <= 1.0 and min(norms) > 0


def test_ball_members_share_one_perturbation_and_respect_the_clamp():
    points = torch.rand(5, 3, 3, generator=_gen(0), dtype=torch.float64)
    family = PerturbationBall(points, epsilon=0.3, noise_std=0.05, clamp=(0.0, 1.0))
    params = family.params_at(torch.full((3, 3), 0.3, dtype=torch.float64))
    member = family.member(params)
    assert isinstance(member, tg.NoisyEmpirical) and member.event_shape == (3, 3)
    assert torch.allclose(member.points, (points + 0.3).clamp(0, 1))
    x = member.rsample(64, _gen(1))
    (grad,) = torch.autograd.grad(x.sum(), params["delta"])
    assert grad.abs().sum() > 0
    assert "clipped to [0, 1]" in family.constraint()


def test_attack_over_l2_ball_aligns_the_universal_perturbation_with_the_weights():
    d = 10
    w = torch.randn(d, generator=_gen(5), dtype=torch.float64)
    points = 0.3 * torch.randn(6, d, generator=_gen(6), dtype=torch.float64)
    family = PerturbationBall(points, epsilon=1.0, noise_std=0.2, norm="l2")
    spec = tg.OutputAbove(0, 1.2 * float(w.norm()))
    att = tg.attack(_linear(w), spec, family, budget=40_000, seed=0, method="mc", **SMALL_ATTACK)
    delta = torch.tensor(family.describe(att.params)["delta"], dtype=torch.float64)
    assert float(delta.norm()) == pytest.approx(1.0, abs=1e-6)
    assert float(delta @ w / w.norm()) > 0.98


# --- FlowFamily ------------------------------------------------------------------------------
def test_flow_identity_init_is_the_base_gaussian():
    base = _full_base(4)
    family = FlowFamily(base, max_kl=1.0)
    member = family.member(family.initial(_gen(0), init_scale=0.0))
    x = base.sample(500, _gen(1))
    assert torch.allclose(member.log_prob(x), base.log_prob(x), atol=1e-6, rtol=0)
    assert _kl(family, family.initial(_gen(0), init_scale=0.0)) == 0.0


def test_flow_is_invertible_and_its_density_normalises():
    base = _full_base(4)
    family = FlowFamily(base, kl_weight=1.0)
    params = family.initial(_gen(2), init_scale=2.0)
    member = family.member(params)
    z = torch.randn(100, 4, generator=_gen(3), dtype=torch.float64)
    back, _ = flow_inverse(params, family.masks, flow_forward(params, family.masks, z)[0])
    assert torch.allclose(back, z, atol=1e-10)
    x = member.sample(100_000, _gen(4))
    with torch.no_grad():
        log_w = base.log_prob(x) - member.log_prob(x)  # E_member[p_base / q] = 1 for a normalised q
    mean_w = float(torch.exp(log_w).mean())
    assert 0.1 < _kl(family, params) < 2.0
    assert mean_w == pytest.approx(1.0, abs=0.05)
    assert float(-log_w.mean()) == pytest.approx(_kl(family, params), abs=0.05)


def test_flow_rsample_gradients_reach_every_weight():
    family = FlowFamily(_full_base(3), n_layers=2, hidden=8, kl_weight=0.5)
    params = family.initial(_gen(0), init_scale=1.0)
    x = family.member(params).rsample(256, _gen(1))
    loss = (x**2).sum() + family.penalty(params)
    grads = torch.autograd.grad(loss, list(params.values()))
    assert all(float(g.abs().max()) > 0 for g in grads)
    assert float(family.penalty(params).detach()) == pytest.approx(0.5 * _kl(family, params))


def test_flow_project_holds_the_kl_bound_and_is_idempotent():
    family = FlowFamily(_full_base(3), max_kl=0.5, kl_weight=0.0)
    params = family.initial(_gen(1), init_scale=4.0)
    assert _kl(family, params) > 0.5
    family.project(params)
    assert 0.5 * (1 - 1e-9) <= _kl(family, params) <= 0.5
    once = {k: v.detach().clone() for k, v in params.items()}
    family.project(params)
    assert all(torch.equal(once[k], params[k]) for k in params)
    assert all(_kl(family, c) <= 0.5 for c in family.candidates(4, _gen(2)))
    assert "KL <= 0.5" in family.constraint()


def test_flow_member_supports_sampling_estimators_only():
    base = _full_base(3)
    family = FlowFamily(base, max_kl=1.0)
    member = family.member(family.candidates(1, _gen(0))[0])
    assert isinstance(member, FlowDistribution) and member.event_shape == (3,)
    assert not member.has_moves and not member.has_moments
    model = _linear(torch.ones(3, dtype=torch.float64))
    with pytest.raises(tg.UnsupportedError, match="MCMC"):
        tg.estimate(model, member, tg.OutputAbove(0, 1.0), method="splitting", budget=50_000)
    est = tg.estimate(model, member, tg.OutputAbove(0, 1.0), method="mc", budget=2_000, seed=0)
    assert est.n_model_calls == 2_000


@pytest.mark.parametrize("bound", [{"max_kl": 1.0, "kl_weight": 0.0}, {"kl_weight": 1.0}])
def test_attack_over_flow_raises_the_probability_above_the_base(bound):
    base = _full_base(4)
    w = torch.tensor([1.0, 2.0, 0.0, -1.0], dtype=torch.float64)
    mu, sd = float(w @ base.moments().means[0]), float(torch.sqrt(w @ base.covariance() @ w))
    spec = tg.OutputAbove(0, mu + 3.0 * sd)
    base_log10 = stats.norm.logsf(3.0) / math.log(10)  # about -2.87
    family = FlowFamily(base, n_layers=2, hidden=16, **bound)
    att = tg.attack(_linear(w), spec, family, budget=40_000, seed=0, method="mc", **SMALL_ATTACK)
    assert att.estimate.ci_log10[0] > base_log10 + 1.0
    # the internal fixed-draw KL agrees with a fresh Monte-Carlo KL of the member found
    x = att.dist.sample(20_000, _gen(9))
    with torch.no_grad():
        fresh_kl = float((att.dist.log_prob(x) - base.log_prob(x)).mean())
    assert fresh_kl == pytest.approx(family.describe(att.params)["kl"], abs=0.15)
    # data processing: KL(q || p) >= kl(q(C) || p(C)) caps what any member can reach
    p = 10**base_log10
    binary_kl = lambda q: q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))  # noqa: E731
    cap = optimize.brentq(lambda q: binary_kl(q) - fresh_kl, p, 1 - 1e-12)
    assert att.estimate.ci_log10[0] < math.log10(cap)
    if "max_kl" in bound:
        assert family.describe(att.params)["kl"] <= 1.0


# --- bad arguments ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "word"),
    [
        (lambda b, p: GaussianShift(b, max_kl=0.0), "max_kl"),
        (lambda b, p: GaussianShift(b, max_kl=-1.0), "max_kl"),
        (lambda b, p: GaussianShift(p, max_kl=1.0), "base"),
        (lambda b, p: PerturbationBall(p.points, epsilon=-0.1, noise_std=0.1), "epsilon"),
        (lambda b, p: PerturbationBall(p.points, epsilon=0.0, noise_std=0.1), "epsilon"),
        (lambda b, p: PerturbationBall(p.points, epsilon=0.1, noise_std=0.1, norm="l1"), "norm"),
        (lambda b, p: PerturbationBall(p.points, epsilon=0.1, noise_std=-1.0), "noise_std"),
        (lambda b, p: PerturbationBall(p.points, epsilon=0.1, noise_std=0.1, clamp=(1, 0)), "clamp"),
        (lambda b, p: FlowFamily(b, max_kl=0.0), "max_kl"),
        (lambda b, p: FlowFamily(b, kl_weight=-1.0), "kl_weight"),
        (lambda b, p: FlowFamily(b, max_kl=None, kl_weight=0.0), "max_kl or a kl_weight"),
        (lambda b, p: FlowFamily(b, n_layers=0), "n_layers"),
        (lambda b, p: FlowFamily(b, hidden=2.5), "hidden"),
    ],
)
def test_bad_arguments_name_the_argument(build, word):
    base = tg.Gaussian(torch.zeros(3))
    points = tg.NoisyEmpirical(torch.zeros(2, 3), 0.1)
    with pytest.raises(tg.InvalidArgumentError, match=word):
        build(base, points)
