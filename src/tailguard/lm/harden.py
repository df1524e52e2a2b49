"""Harden an LM policy against an adversary, and report what it changed on held-out messages.

The policy is a ``NextTokenLogits`` (message ids -> first-reply-token logits) over an
LM that trains LoRA adapters; "the original policy" is the same module with its
adapters disabled. In the game (``harden.game``) it is an ``LMPolicy`` and descends

    kl_weight * mean_{x ordinary} KL(pi_0(.|x) || pi(.|x))
      + mean_{pools} max(ln mean_{x in pool} pi(x), ln floor),

pi(x) = exp(spec.soft) its probability of a catastrophic first reply token (for
``NextTokenIn``: a forbidden one), the pools the adversary's messages and ordinary
messages from the deployment distribution D, the KL over the whole
first-reply-token distribution on ordinary messages from D: the task loss is to
answer ordinary messages as the original did. The log of the mean (not the mean)
keeps the gradient alive as the mass falls by orders of magnitude; the floor stops
pushing where nothing more can be measured.

What hardening did is measured on fixed messages training never saw, before
(adapters off) against after (``lm.measure.policy_report``).

``tg.harden`` on an LM policy and an LM adversary comes here
(``harden_language_model``): rounds of the game (``play_rounds``: the policy
hardened, the adversary trained again against it), a measurement after each, and
the independent verdict of ``harden.lm_judge``, in an ``LMHardenReport``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import TypeIs

from ..attack import check_positive_int
from ..dists.lm import LMDistribution, check_token_ids, vocab_size
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..harden.adversary import FixedAdversary
from ..harden.checkpoint import FILE_NAME
from ..harden.game import Game, train_loop
from ..harden.objective import Objective
from ..harden.policy import Batch
from ..harden.report import HardenReport
from ..harden.trainer import HardenResult as TrainerResult
from ..harden.trainer import reject_unknown_settings
from ..oracle import ScoreOracle
from ..report.plots import EstimatePlot, figure
from ..specs import Spec
from .adversary import (
    AdversaryResult,
    AdversarySettings,
    train_adversary,
    writer_with_adapters,
)
from .hf import NextTokenLogits
from .measure import mass_on, message_row
from .training import Progress, TrainingSettings, adapters_off, run_config, trainable, with_adapters

__all__ = ["HardenResult", "LMHardenReport", "LMHardenSettings", "LMJudgeSettings", "LMPolicy",
           "PolicySettings", "Round", "harden_language_model", "harden_policy", "play_rounds",
           "plays_language_model"]

#: held-out ordinary messages are drawn, and the rounds measured, with seeds offset by this
HELD_OUT_SEED_OFFSET = 7919

@dataclass(frozen=True)
class PolicySettings(TrainingSettings):
    """``kl_weight`` on the ordinary-message KL; ``floor`` below which the catastrophe mass is not pushed."""

    kl_weight: float = 1.0
    floor: float = 1e-7

    def __post_init__(self) -> None:
        super().__post_init__()
        weight = self.kl_weight
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
            raise InvalidArgumentError(f"kl_weight must be a finite number >= 0, got {self.kl_weight!r}")
        if not (isinstance(self.floor, int | float) and 0 < self.floor < 1):
            raise InvalidArgumentError(f"floor must be in (0, 1), got {self.floor!r}")


@dataclass(frozen=True)
class HardenResult:
    """The hardened policy (the same module, now with trained adapters) and one row per step:
    ``attacks_log10_p``, ``ordinary_log10_p`` (log10 mean pi on the step's batches), ``kl``, ``step``."""

    policy: NextTokenLogits
    history: list[dict[str, float]]
    settings: PolicySettings
    seed: int


class LMPolicy:
    """A language-model policy of the game: LoRA adapters train, the task is to stay its frozen self.

    Task loss: ``kl_weight`` times the mean first-token KL(original || trained) on a
    batch of ordinary messages (m, length).
    """

    def __init__(self, policy: NextTokenLogits, ordinary: Tensor, batch: int, kl_weight: float):
        self.model, self.ordinary, self.batch, self.kl_weight = policy, ordinary, batch, kl_weight

    def trainable(self) -> dict[str, Tensor]:
        return trainable(self.model.lm)

    def task_loss(self, generator: torch.Generator) -> tuple[Tensor, Batch, dict[str, float]]:
        o = self.ordinary[torch.randint(self.ordinary.shape[0], (self.batch,), generator=generator)]
        with adapters_off(self.model.lm):
            reference = torch.log_softmax(self.model(o).double(), -1)
        log_new = torch.log_softmax(self.model(o).double(), -1)
        kl = (reference.exp() * (reference - log_new)).sum(1).mean()
        return self.kl_weight * kl, (o, reference), {"kl": float(kl.detach())}


def _check_messages(**pools: Tensor) -> None:
    for name, pool in pools.items():
        if not isinstance(pool, Tensor) or pool.dim() != 2 or pool.shape[0] < 1:
            raise InvalidArgumentError(f"{name} must be message ids of shape (m, length), m >= 1")


def harden_policy(policy: NextTokenLogits, attacks: Tensor, ordinary: Tensor, spec: Spec,
                  settings: PolicySettings = PolicySettings(), seed: int = 0,
                  checkpoint_dir: str | Path | None = None, progress: Progress | None = None) -> HardenResult:
    """Descend the policy's catastrophe mass on attack and ordinary messages, KL-tied to the original.

    attacks, ordinary: pools of message ids (m, length); each step draws ``settings.batch``
    of each. If ``policy.lm`` has no LoRA adapters yet they are added in place, so the
    policy must own its copy of the LM (not the one that writes D or the attacks).
    """
    if not isinstance(policy, NextTokenLogits):
        raise InvalidArgumentError(f"policy must be a NextTokenLogits, got {type(policy).__name__}")
    if not isinstance(spec, Spec):
        raise InvalidArgumentError(f"spec must be a tailguard spec, got {type(spec).__name__}")
    _check_messages(attacks=attacks, ordinary=ordinary)
    lm: Any = with_adapters(policy.lm, settings, seed)
    policy.lm = lm
    oracle = ScoreOracle.for_model(policy, spec)
    floor = math.log(settings.floor)
    pools = [FixedAdversary(name, pool, oracle, settings.batch, 1.0, floor)
             for name, pool in (("attacks", attacks), ("ordinary", ordinary))]
    # lam 1/2: the two pools' terms are averaged, so the risk weighs as one term against the KL
    game = Game(LMPolicy(policy, ordinary, settings.batch, settings.kl_weight), pools, Objective(lam=0.5),
                oracle=oracle)
    resume = checkpoint_dir is not None and (Path(checkpoint_dir) / FILE_NAME).is_file()

    def on_step(done: int, row: dict[str, Any]) -> None:
        if progress is not None:
            progress(done - 1, {k: v for k, v in row.items() if k != "step"})

    was_training = policy.training
    try:
        trace = train_loop(game, settings.loop(), seed, run_config(settings, seed), checkpoint_dir, resume,
                           on_step)
    finally:
        policy.train(was_training)
    return HardenResult(policy, trace.steps, settings, seed)


@dataclass(frozen=True)
class Round:
    """One round of the game: the policy hardened on every attack message so far (``policy``), then
    the adversary trained again against it (``adversary``); ``attacks``: the pool the policy trained on."""

    number: int
    policy: HardenResult
    adversary: AdversaryResult
    attacks: Tensor


def play_rounds(policy: NextTokenLogits, adversary: LMDistribution, ordinary: Tensor, spec: Spec, rounds: int,
                pool: int, policy_settings: PolicySettings, adversary_settings: AdversarySettings,
                seed: int = 0, checkpoint_dir: str | Path | None = None, progress: Progress | None = None,
                after_round: Callable[[Round], None] | None = None) -> list[Round]:
    """Rounds of the game between an LM policy and an LM adversary (with adapters, already trained).

    Each round the adversary writes ``pool`` fresh messages, added to those of the
    rounds before; the policy is hardened on all of them and on ``ordinary``
    (``harden_policy``), and the adversary is trained again against the hardened
    policy (``train_adversary``): it adapts, and the next round trains on what it
    then writes. ``after_round(round)`` is called at the end of each round, while
    the policy is still that round's (to measure it against the adapted adversary). Round r checkpoints under
    ``checkpoint_dir/policy-r`` and ``checkpoint_dir/adversary-vs-hardened-r``.
    """
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise InvalidArgumentError(f"rounds must be a positive int, got {rounds!r}")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    generator = torch.Generator().manual_seed(seed)
    pools: list[Tensor] = []
    played: list[Round] = []
    for r in range(1, rounds + 1):
        with torch.no_grad():
            pools.append(adversary.sample(pool, generator))
        attacks = torch.cat(pools)
        hardened = harden_policy(policy, attacks, ordinary, spec, policy_settings, seed=seed + r - 1,
                                 checkpoint_dir=_inside(folder, f"policy-{r}"), progress=progress)
        again = train_adversary(adversary, policy, spec, adversary_settings, seed=seed + r,
                                checkpoint_dir=_inside(folder, f"adversary-vs-hardened-{r}"),
                                progress=progress)
        played.append(Round(r, hardened, again, attacks))
        if after_round is not None:
            after_round(played[-1])
    return played


def _inside(folder: Path | None, name: str) -> Path | None:
    return None if folder is None else folder / name


@dataclass(frozen=True)
class LMJudgeSettings:
    """Messages the fresh adversary writes to be measured, the fewest distinct ones it must keep,
    its training (None: the training adversary's, with ``diversity`` 1), and how many decades
    apart a training-side and an independent figure may lie before they are flagged."""

    messages: int = 128
    min_distinct: int = 64
    adversary: AdversarySettings | None = None
    tolerance: float = 1.0

    def __post_init__(self) -> None:
        for name in ("messages", "min_distinct"):
            check_positive_int(getattr(self, name), name)
        if self.min_distinct > self.messages:
            raise InvalidArgumentError(f"min_distinct ({self.min_distinct}) must not exceed messages "
                                       f"({self.messages})")
        if self.adversary is not None and not isinstance(self.adversary, AdversarySettings):
            raise InvalidArgumentError(f"the judge's adversary must be AdversarySettings or None, "
                                       f"got {type(self.adversary).__name__}")
        tolerance = self.tolerance
        finite = isinstance(tolerance, int | float) and 0 < tolerance < math.inf
        if isinstance(tolerance, bool) or not finite:
            raise InvalidArgumentError(f"tolerance must be a finite number of decades > 0, got {tolerance!r}")

    def adversary_settings(self, training: AdversarySettings) -> AdversarySettings:
        """The fresh adversary's training: ``adversary``, or the training adversary's made diverse."""
        if self.adversary is not None:
            return self.adversary
        return replace(training, diversity=max(training.diversity, 1.0))


@dataclass(frozen=True)
class LMHardenSettings:
    """``tg.harden``'s settings for an LM policy: rounds of the game (``play_rounds``), attack messages
    the adversary writes per round (``pool``), the policy's and the adversary's training, ordinary
    messages drawn from ``deployment`` for the verdict when no ``test`` is given (``held_out``), and
    the verdict's (``judge``). ``policy``, ``adversary`` and ``judge`` may be given as dicts."""

    rounds: int = 2
    pool: int = 96
    policy: PolicySettings = PolicySettings()
    adversary: AdversarySettings = AdversarySettings()
    held_out: int = 256
    judge: LMJudgeSettings = LMJudgeSettings()

    def __post_init__(self) -> None:
        for name in ("rounds", "pool", "held_out"):
            check_positive_int(getattr(self, name), name)
        for name, kind in (("policy", PolicySettings), ("adversary", AdversarySettings),
                           ("judge", LMJudgeSettings)):
            value = getattr(self, name)
            if isinstance(value, dict):
                reject_unknown_settings(kind, value, f"harden's {name} settings")
                value = kind(**value)
                object.__setattr__(self, name, value)
            if not isinstance(value, kind):
                raise InvalidArgumentError(f"{name} must be {kind.__name__} or a dict of its fields, "
                                           f"got {type(value).__name__}")


def plays_language_model(family: Any, model: Any) -> TypeIs[LMDistribution]:
    """Whether ``harden``'s family and model are an LM adversary and an LM policy; a pair of one LM
    side and one of another kind is refused by name."""
    policy, writer = isinstance(model, NextTokenLogits), isinstance(family, LMDistribution)
    if policy and not writer:
        raise InvalidArgumentError(
            "model is an LM policy (NextTokenLogits): its family must be an LM adversary "
            f"(tailguard.LMDistribution writing messages), got {type(family).__name__}")
    if writer and not policy:
        raise InvalidArgumentError(
            "family is an LM adversary (LMDistribution): the model must be an LM policy "
            f"(tailguard.lm.NextTokenLogits, e.g. chat_policy), got {type(model).__name__}")
    return policy


def _message_ids(ids: Any, vocab: int | None, name: str) -> Tensor:
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ShapeMismatchError(f"{name} must be message ids of shape (m, length), m >= 1; got {shape}")
    check_token_ids(ids, vocab, name)
    return ids.long()


def _held_out(train: Tensor, test: Any, deployment: Any, n: int, vocab: int | None,
              seed: int) -> tuple[Tensor, Tensor]:
    """(messages to train on, held-out ordinary messages for the verdict): ``test`` if given, else ``n``
    drawn from ``deployment`` (a generator training never uses), else a quarter of ``train``."""
    if test is not None:
        return train, _message_ids(test, vocab, "test")
    generator = torch.Generator().manual_seed(seed + HELD_OUT_SEED_OFFSET)
    if deployment is not None:
        if not isinstance(deployment, LMDistribution):
            raise InvalidArgumentError(f"deployment of an LM policy must be an LMDistribution, "
                                       f"got {type(deployment).__name__}")
        with torch.no_grad():
            return train, _message_ids(deployment.sample(n, generator), vocab, "deployment's messages")
    if train.shape[0] < 4:
        raise InvalidArgumentError("with neither test nor deployment, a quarter of train is held out for the "
                                   f"verdict: train needs at least 4 messages, got {train.shape[0]}")
    order = torch.randperm(train.shape[0], generator=generator)
    cut = train.shape[0] // 4
    return train[order[cut:]], train[order[:cut]]


def _checkpoint_folder(checkpoint_dir: Any, resume: Any) -> Path | None:
    """The run's folder; resume=True continues whatever checkpoints it holds, resume=False refuses any."""
    if not isinstance(resume, bool):
        raise InvalidArgumentError(f"resume must be True or False, got {resume!r}")
    if checkpoint_dir is None:
        if resume:
            raise InvalidArgumentError("resume=True needs checkpoint_dir")
        return None
    if not isinstance(checkpoint_dir, str | Path):
        raise InvalidArgumentError(f"checkpoint_dir must be a str or Path, got {checkpoint_dir!r}")
    folder = Path(checkpoint_dir)
    if not resume and folder.is_dir() and any(folder.rglob(FILE_NAME)):
        raise InvalidArgumentError(f"{folder} holds checkpoints of a run: pass resume=True to continue it, "
                                   "or use a new directory")
    return folder


def harden_language_model(model: Any, train: Any, spec: Any, family: Any, seed: int = 0,
                          deployment: Any = None, test: Any = None, checkpoint_dir: str | Path | None = None,
                          resume: bool = False, progress: bool = False, **settings: Any) -> TrainerResult:
    """``tg.harden`` for an LM policy against an LM adversary: rounds of the game, then the verdict.

    model: the policy, hardened in place (LoRA adapters, added if missing; the original is the same
    module with them off: ``training.adapters_off``); train: ordinary message ids
    (m, length) from D; family: the adversary's writer (adapters added if missing; trained
    or not), which ``play_rounds`` trains on against each round's policy. After each round
    the adversary, re-trained against that round's policy, writes ``judge.messages``
    messages that are measured against it (``report.evals``). Then ``harden.lm_judge``
    judges the final policy on held-out ordinary messages (``test``, or drawn from
    ``deployment``, or a quarter of ``train``) and with a fresh adversary. Checkpoints go
    under ``checkpoint_dir`` (one folder per training run); ``resume=True`` continues them.
    Settings: ``LMHardenSettings``.
    """
    if not (isinstance(model, NextTokenLogits) and isinstance(family, LMDistribution)):
        plays_language_model(family, model)  # names the side that is not an LM
        raise InvalidArgumentError("the LM game needs an LM policy (NextTokenLogits) and an LM adversary "
                                   "(LMDistribution)")
    policy = model
    reject_unknown_settings(LMHardenSettings, settings, "harden (an LM policy)")
    cfg = LMHardenSettings(**settings)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidArgumentError(f"seed must be an int, got {seed!r}")
    if not isinstance(spec, Spec):
        raise InvalidArgumentError(f"spec must be a tailguard spec, got {type(spec).__name__}")
    vocab, written = vocab_size(policy.lm), vocab_size(family.lm)
    if vocab is not None and written is not None and written > vocab:
        raise InvalidArgumentError(f"the adversary's LM writes {written} kinds of token; "
                                   f"the policy reads {vocab}")
    ordinary, held_out = _held_out(_message_ids(train, vocab, "train"), test, deployment, cfg.held_out, vocab,
                                   seed)
    folder = _checkpoint_folder(checkpoint_dir, resume)
    writer = writer_with_adapters(family, cfg.adversary, seed)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed + HELD_OUT_SEED_OFFSET + 1)
    evals: list[dict[str, Any]] = []
    written_before: list[Tensor] = []

    def evaluate(game_round: Round) -> None:
        """This round's policy on the held-out messages, its re-trained adversary and the previous one's."""
        with torch.no_grad():
            x = writer.sample(cfg.judge.messages, generator)
        row: dict[str, Any] = {"round": game_round.number, "attack_pool": int(game_round.attacks.shape[0]),
                               "held_out_ordinary": message_row(mass_on(policy, held_out, spec)),
                               "adversary": message_row(mass_on(policy, x, spec)),
                               "adversary_history": game_round.adversary.history,
                               "adversary_examples": x[:4].tolist()}
        if written_before:
            row["previous_adversary"] = message_row(mass_on(policy, written_before[-1], spec))
        written_before.append(x)
        evals.append(row)

    from ..harden.lm_judge import lm_verdict  # the judge builds on this module

    with counting_rows(policy) as calls:
        played = play_rounds(policy, writer, ordinary, spec, cfg.rounds, cfg.pool, cfg.policy, cfg.adversary,
                             seed, folder, _printer() if progress else None, evaluate)
        steps = [{"round": r.number, **row} for r in played for row in r.policy.history]
        last = [10.0 ** h["ordinary_log10_p"] for h in played[-1].policy.history[-4:]]
        training_side = {"deployment": math.log10(max(sum(last) / len(last), 1e-300)),
                         "adversary_vs_hardened": evals[-1]["adversary"]["log10"]}
        verdict = lm_verdict(policy, spec, writer, held_out, training_side, cfg.judge, cfg.adversary, seed,
                             folder)
    report = LMHardenReport(settings=asdict(cfg), constraint=describe_writer(writer), seed=seed, steps=steps,
                            evals=evals, seconds=time.perf_counter() - started, verdict=verdict,
                            model_calls=calls[0])
    return TrainerResult(model=policy, report=report)


@contextmanager
def counting_rows(module: nn.Module) -> Iterator[list[int]]:
    """Count the rows (messages) pushed through ``module`` while the block runs: ``[count]``."""
    count = [0]

    def add(_: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Tensor):
            count[0] += int(args[0].shape[0])

    handle = module.register_forward_pre_hook(add)
    try:
        yield count
    finally:
        handle.remove()


def describe_writer(writer: LMDistribution) -> str:
    return (f"LM adversary: a LoRA-tuned writer of {writer.length}-token messages after a prompt of "
            f"{writer.prompt_ids.numel()} tokens, temperature {writer.temperature:g}")


def _printer() -> Progress:
    def show(index: int, metrics: dict[str, float]) -> None:
        figures = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"step {index}: {figures}", flush=True)

    return show


class LMHardenReport(HardenReport):
    """The report of an LM run: ``steps`` the policy's (with their ``round``), ``evals`` one row per round
    (the re-trained adversary's success against it), ``verdict`` from ``harden.lm_judge.lm_verdict``.
    ``model_calls``: messages pushed through the policy by this process (training, the adversaries'
    rewards, the verdict); a resumed run counts only what it computed after its checkpoints."""

    def markdown(self) -> str:
        lines = [f"Adversary: {self.constraint}", "",
                 "| round | attack messages trained on | held-out ordinary: log10 P [CI] | "
                 "re-trained adversary vs this policy | previous round's adversary vs this policy |",
                 "|---:|---:|---|---|---|"]
        for ev in self.evals:
            previous = _cell(ev["previous_adversary"]) if "previous_adversary" in ev else "-"
            lines.append(f"| {ev['round']} | {ev['attack_pool']} | {_cell(ev['held_out_ordinary'])} | "
                         f"{_cell(ev['adversary'])} | {previous} |")
        from ..harden.lm_judge import lm_verdict_lines  # the judge builds on this module

        return "\n".join(lines + [""] + lm_verdict_lines(self.verdict)) + "\n"

    def figure(self) -> Any:
        """log10 mean pi on the policy's training batches per step, rounds one after another."""
        fig, (ax,) = figure(figsize=(8, 4.4))
        plot = EstimatePlot(ax, "Catastrophe mass on the policy's training batches", "policy step")
        steps = list(range(len(self.steps)))
        plot.line(steps, [s["attacks_log10_p"] for s in self.steps], "attack messages")
        plot.line(steps, [s["ordinary_log10_p"] for s in self.steps], "ordinary messages", ls=":")
        plot.finish(loc="best")
        return fig

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write report.json, report.md and report.png into ``directory`` (created if missing)."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / "report.json", "markdown": folder / "report.md"}
        paths["json"].write_text(self.to_json())
        paths["markdown"].write_text(self.markdown())
        paths["plot"] = self.plot(folder / "report.png")
        return paths


def _cell(row: dict[str, Any]) -> str:
    low, high = row["ci_log10"]
    return f"{row['log10']:.2f} [{low:.2f}, {high:.2f}], {row['distinct']} distinct"
