"""Rare-event estimation on an LM-written D, against exhaustive enumeration.

D is a tiny causal language model (a 2-layer Llama, ``transformers``) trained by the
project on the scikit-learn dataset descriptions, writing the next LENGTH characters
after a one-character prompt (12 symbols, so 12^5 = 248,832 messages, every one's
exact probability from the LM). The policies are the character transformers of
``lm_enum`` (next character after 5); the target is "the policy's next character is
t", for every t whose exact probability under D lies in LM_BAND_LOG10. Each estimate
gets LM_BUDGET calls, policy calls and LM calls (messages written or scored) counted
alike, so plain sampling can afford LM_BUDGET / 2 messages.

Beside the estimators, the Gumbel-tail forecast of Jones et al. (2025,
``tailguard.lm.forecast``) is given the same LM_BUDGET / 2 plain messages: the
elicitation probability of a message is sigmoid(score) (catastrophe iff it is above
1/2), and the forecast log P[C] is -log n* where its worst of n* queries crosses 1/2.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import tailguard as tg

from ..errors import require_extra
from ..lm.forecast import forecast_log_p
from ..tasks.token_transformer import build_vocab, descriptions_text, train_token_transformer
from .lm_enum import TokenCase, itakura_saito, markdown, plot, run_case, summarise

LM_BAND_LOG10 = (-9.0, -4.0)
LM_BUDGET = 2**15
LENGTH = 5
VOCAB = 12
METHODS = ("auto", "lm-is", "splitting", "mc")
FORECAST = "forecast (Gumbel tail)"


def train_char_llama(windows: Tensor, seed: int, steps: int = 300) -> nn.Module:
    """A 2-layer Llama (hidden 32) trained on windows (m, w) of character ids, every position's next id."""
    transformers: Any = require_extra("transformers", "lm")
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
                                      max_position_embeddings=16)
    torch.manual_seed(seed)
    lm = transformers.LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    lm.train()
    for _ in range(steps):
        batch = windows[torch.randint(windows.shape[0], (128,), generator=g)]
        logits = lm(input_ids=batch[:, :-1]).logits
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lm.eval()


def all_messages(length: int = LENGTH) -> Tensor:
    """Every message (VOCAB^length, length) in lexicographic order."""
    index = torch.arange(VOCAB**length)
    powers = VOCAB ** torch.arange(length - 1, -1, -1)
    return (index[:, None] // powers) % VOCAB


def exact_lm_target_log10(policy: nn.Module, dist: tg.LMDistribution) -> Tensor:
    """log10 P_D[argmax policy(x) = t] (VOCAB,) by summing D's exact mass over every message."""
    xs = all_messages(dist.length)
    total = torch.full((VOCAB,), -math.inf, dtype=torch.float64)
    with torch.no_grad():
        for chunk in xs.split(16_384):
            lp = dist.log_prob(chunk)
            top = policy(chunk).argmax(1)
            for t in torch.unique(top).tolist():
                total[t] = torch.logaddexp(total[t], torch.logsumexp(lp[top == t], 0))
    return total / math.log(10)


def build_cases(policy_seeds: Iterable[int] = (0, 1, 2), lm_seeds: Iterable[int] = (0,),
                temperatures: Iterable[float] = (0.5, 0.35),
                on_case: Callable[[str], None] | None = None) -> list[TokenCase]:
    """Every (policy, LM, temperature) case with each target's exact log10 probability."""
    text = descriptions_text()
    chars = build_vocab(text, VOCAB)
    ids = chars.encode(text)
    prompt = chars.encode(" ")
    lms = {s: train_char_llama(ids.unfold(0, LENGTH + 2, 1), seed=100 + s) for s in lm_seeds}
    cases = []
    for ps in policy_seeds:
        policy, _, _ = train_token_transformer(ctx=LENGTH, vocab=VOCAB, seed=ps)
        for ls, lm in lms.items():
            for temperature in temperatures:
                dist = tg.LMDistribution(lm, prompt, LENGTH, temperature=temperature, batch_size=2048)
                name = f"lm-written/p{ps}/lm{ls}/T{temperature:g}"
                cases.append(TokenCase(name, policy, dist, exact_lm_target_log10(policy, dist)))
                if on_case is not None:
                    on_case(name)
    return cases


def forecast_record(case: TokenCase, target: int, seed: int, budget: int = LM_BUDGET) -> dict[str, Any]:
    """The Gumbel-tail forecast of log10 P[C] from budget / 2 plain messages, as a benchmark record."""
    truth = float(case.exact_log10[target])
    start = time.perf_counter()
    x = case.dist.sample(budget // 2, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        s = tg.ClassIs(target).score(x, case.model(x)).double()
    log_p = forecast_log_p(torch.sigmoid(s), threshold=0.5)
    est = log_p / math.log(10)
    return {
        "case": case.name, "target": target, "method": FORECAST, "seed": seed, "budget": budget,
        "true_log10_p": truth, "estimate_log10_p": est, "ci_log10": [est, est], "covered": False,
        "zero": bool(math.isinf(est)), "abs_log10_error": abs(est - truth),
        "itakura_saito": itakura_saito(truth, est), "model_calls": budget,
        "seconds": time.perf_counter() - start, "heuristic": True, "trusted": False,
    }


def run_benchmark(out: Path, quick: bool = False, seeds: Iterable[int] = range(5),
                  methods: Iterable[str] = METHODS,
                  progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Run every method and the forecast on every in-band target and seed; write lm_written.{json,md,png}."""
    say = progress or (lambda message: None)
    on_case = lambda name: say(f"enumerated {name}")  # noqa: E731
    cases = build_cases((0,), (0,), (0.35,), on_case) if quick else build_cases(on_case=on_case)
    work = [(c, t) for c in cases for t in c.targets(LM_BAND_LOG10)]
    seeds, methods = (list(seeds)[:1], ("auto",)) if quick else (list(seeds), tuple(methods))
    work = work[:2] if quick else work
    records = []
    for i, (case, target) in enumerate(work):
        for seed in seeds:
            for method in methods:
                rec = run_case(case, target, method, seed=1000 * i + seed, budget=LM_BUDGET)
                records.append(rec)
                say(f"[{i + 1}/{len(work)}] {case.name} t={target} seed {seed} {method}: true "
                    f"{rec['true_log10_p']:.2f}, estimate {rec['estimate_log10_p']:.2f}, "
                    f"calls {rec['model_calls']}, {rec['seconds']:.1f} s")
            records.append(forecast_record(case, target, seed=1000 * i + seed))
        if progress is not None:  # this target's records, so that an interrupted run still reports
            say("records " + json.dumps(records[-(len(seeds) * (len(methods) + 1)):], default=str))
    summary = summarise(records)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / f"lm_written.{ext}" for key, ext in
             (("json", "json"), ("markdown", "md"), ("plot", "png"))}
    paths["json"].write_text(json.dumps({"summary": summary, "records": records,
                                         "cases": {c.name: c.exact_log10.tolist() for c in cases}},
                                        indent=1, default=str))
    low, high = LM_BAND_LOG10
    header = (f"# Rare-event estimation on an LM-written D, against exhaustive enumeration\n\n"
              f"{len(work)} targets with true p in [1e{low:g}, 1e{high:g}] over {len(cases)} (policy, LM, "
              f"temperature) cases, {len(seeds)} seeds each; {LM_BUDGET:,} calls per estimate (policy calls "
              f"plus LM calls); vocabulary {VOCAB}, messages of {LENGTH} tokens ({VOCAB**LENGTH:,} "
              "messages). The forecast has no interval (its coverage is 0 by construction).\n")
    figure = f"\n![estimates vs exact]({paths['plot'].name})\n"
    paths["markdown"].write_text(markdown(summary, header) + figure)
    plot(records, paths["plot"], f"LM-written D: estimators at {LM_BUDGET:,} calls vs enumeration",
         LM_BAND_LOG10)
    return paths
