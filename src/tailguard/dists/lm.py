"""Token sequences written by an autoregressive language model: D for text inputs.

An LM continuing a prompt at some temperature defines a distribution over the
next ``length`` tokens with an exact log-probability (the sum of its per-token
log-softmax terms), so it serves as D itself (the messages a deployed model sees)
and as an importance-sampling proposal (an adversary's messages). Sequences have a
fixed length so that they batch: once ``eos_id`` is drawn, every later position is
``eos_id`` with probability 1.

The LM is any Hugging Face-style causal model: ``lm(input_ids=ids)`` returning an
object with ``.logits`` (n, t, vocab), or such a tensor directly. Every row shares
the same prompt, so models that return a KV cache (``past_key_values``) run the
prompt once, for a single row, and copy its cache to the batch; they are also asked
for only the logits that are needed (``logits_to_keep``). The helpers below do that
for the chat policies of ``tailguard.lm`` too.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError, ModelOutputError, ShapeMismatchError
from .base import Distribution


def lm_logits(output: Any) -> Tensor:
    """The (n, t, vocab) logits of a causal LM's output (an object with .logits, or a tensor)."""
    logits = output if isinstance(output, Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(output).__name__
        raise ModelOutputError(f"the language model must return logits (n, t, vocab), got {got}")
    return logits


def _accepts(lm: Callable[..., Any], name: str) -> bool:
    """Whether ``lm``'s forward takes the keyword ``name`` (Hugging Face models and peft wrappers do)."""
    forward = getattr(lm, "forward", lm)
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def cache_keyword(lm: Callable[..., Any]) -> str:
    """The keyword that hands a causal LM its KV cache: ``cache`` (transformers 5.x) or ``past_key_values``.

    transformers deprecated ``past_key_values`` for ``cache`` (removal announced for 5.40);
    a peft wrapper forwards keywords to its base model, so that model's forward decides.
    """
    return "cache" if _named(lm, "cache") else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The KV cache a causal LM's output carries (``cache`` or ``past_key_values``), or None."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _call(lm: Callable[..., Any], ids: Tensor, keep: int | None = None, cache: Any = None) -> Any:
    """lm on ids (n, t), asking for the last ``keep`` logits and reusing ``cache`` when it can."""
    kwargs: dict[str, Any] = {}
    if keep is not None and _accepts(lm, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    if cache is not None:
        kwargs.update({cache_keyword(lm): cache, "use_cache": True})
    return lm(input_ids=ids, **kwargs)


def _prefix_cache(lm: Callable[..., Any], prefix: Tensor, n: int) -> tuple[Tensor, Any]:
    """Run ``prefix`` (p,) once: its last logits expanded to (n, vocab), and its KV cache for n rows.

    The cache is None when the model keeps none that can be copied to a batch; callers then
    run the prefix with every row instead.
    """
    if not (_accepts(lm, cache_keyword(lm)) and _accepts(lm, "use_cache")):
        return torch.empty(0), None
    out = lm(input_ids=prefix[None], use_cache=True, **(
        {"logits_to_keep": 1} if _accepts(lm, "logits_to_keep") else {}))
    cache = returned_cache(out)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return torch.empty(0), None
    cache.batch_repeat_interleave(n)
    return lm_logits(out)[:, -1].expand(n, -1), cache


def continuation_logits(lm: Callable[..., Any], prefix: Tensor, ids: Tensor, keep: int) -> Tensor:
    """Logits (n, keep, vocab) at the last ``keep`` positions of prefix (p,) + ids (n, t).

    keep <= t + 1, so the positions lie in ids or at the prefix's last token. Gradients
    flow to the LM's parameters, through the shared prefix cache as well.
    """
    n, t = ids.shape
    if prefix.numel() == 0:
        return lm_logits(_call(lm, ids, keep))[:, -keep:]
    first, cache = _prefix_cache(lm, prefix, n)
    if cache is None:
        full = torch.cat([prefix.expand(n, -1), ids], dim=1)
        return lm_logits(_call(lm, full, keep))[:, -keep:]
    if t == 0:
        return first[:, None]
    rest = lm_logits(_call(lm, ids, min(keep, t), cache))[:, -min(keep, t):]
    return torch.cat([first[:, None], rest], dim=1) if keep == t + 1 else rest


def padded_logits(lm: Callable[..., Any], rows: list[Tensor], keep: int) -> Tensor:
    """Logits (n, keep, vocab) at the last ``keep`` positions of each of n sequences of any length.

    A model that takes ``attention_mask`` and ``position_ids`` (every Hugging Face causal
    LM) gets one batch, left-padded, the padding masked out and positions counted from
    each row's first real token, so every row sees what it would see alone. Other
    models get one call per distinct length. Gradients flow to the LM's parameters.
    """
    if not rows:
        raise InvalidArgumentError("padded_logits needs at least one sequence")
    lengths = torch.tensor([r.numel() for r in rows])
    if int(lengths.min()) < keep:
        raise ShapeMismatchError(f"every sequence needs at least {keep} tokens, one has {int(lengths.min())}")
    device = rows[0].device
    if _accepts(lm, "attention_mask") and _accepts(lm, "position_ids") and _named(lm, "attention_mask"):
        width = int(lengths.max())
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            ids[i, width - r.numel():] = r
            mask[i, width - r.numel():] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": keep} if _accepts(lm, "logits_to_keep") else {}
        return lm_logits(lm(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs))[:, -keep:]
    out: list[Tensor | None] = [None] * len(rows)
    for length in torch.unique(lengths).tolist():
        index = torch.nonzero(lengths == length).flatten()
        batch = torch.stack([rows[i] for i in index.tolist()])
        logits = lm_logits(_call(lm, batch, keep))[:, -keep:]
        for j, i in enumerate(index.tolist()):
            out[i] = logits[j]
    return torch.stack([t for t in out if t is not None])


def _named(lm: Callable[..., Any], name: str) -> bool:
    """Whether the LM's (or a peft wrapper's base model's) forward names the keyword ``name`` itself."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    try:
        return name in inspect.signature(getattr(base, "forward", base)).parameters
    except (TypeError, ValueError):
        return False


def decode(lm: Callable[..., Any], prefix: Tensor, ids: Tensor, steps: int,
           choose: Callable[[Tensor], Tensor]) -> Tensor:
    """``steps`` tokens (n, steps) written after prefix (p,) + ids (n, t), one at a time.

    choose maps the next-token logits (n, vocab) to tokens (n,) (sampling, argmax). The KV
    cache is used when the model keeps one. No gradients.
    """
    n = ids.shape[0]
    tokens = torch.empty(n, steps, dtype=torch.long, device=ids.device)
    takes_cache = _accepts(lm, cache_keyword(lm))
    with torch.no_grad():
        first, cache = _prefix_cache(lm, prefix, n) if prefix.numel() else (torch.empty(0), None)
        context = ids if cache is not None else torch.cat([prefix.expand(n, -1), ids], dim=1)
        if cache is not None and ids.shape[1] == 0:
            logits = first
        else:
            out = _call(lm, context, 1, cache)
            logits = lm_logits(out)[:, -1]
            cache = returned_cache(out) if takes_cache else None
        for t in range(steps):
            tokens[:, t] = choose(logits)
            if t + 1 == steps:
                break
            if cache is not None:
                out = _call(lm, tokens[:, t : t + 1], 1, cache)
                cache = returned_cache(out)
            else:
                out = _call(lm, torch.cat([context, tokens[:, : t + 1]], dim=1), 1)
            logits = lm_logits(out)[:, -1]
    return tokens


def vocab_size(lm: Any) -> int | None:
    """The LM's vocabulary size when its config states it (Hugging Face and peft models)."""
    size = getattr(getattr(lm, "config", None), "vocab_size", None)
    return size if isinstance(size, int) else None


def check_token_ids(x: Tensor, vocab: int | None, name: str) -> None:
    """Raise InvalidArgumentError unless x holds integer ids in [0, vocab)."""
    if x.is_floating_point() or x.dtype == torch.bool:
        raise InvalidArgumentError(f"{name} must hold integer token ids, got dtype {x.dtype}")
    if x.numel() and int(x.min()) < 0:
        raise InvalidArgumentError(f"{name} holds negative token ids")
    if x.numel() and vocab is not None and int(x.max()) >= vocab:
        raise InvalidArgumentError(f"{name} holds token id {int(x.max())} but the LM has {vocab} tokens")


#: draw(t, log_d (b, vocab), start) -> tokens (b,): how ``LMDistribution.sample_steered`` picks token t
TokenDraw = Callable[..., Tensor]


def _draw(log_d: Tensor, generator: torch.Generator) -> Tensor:
    """One token per row (b,) from log-probabilities log_d (b, vocab)."""
    return torch.multinomial(torch.exp(log_d), 1, generator=generator)[:, 0]


class LMDistribution(Distribution):
    """The next ``length`` tokens an LM writes after ``prompt_ids``, at ``temperature``.

    lm: causal LM module; prompt_ids: LongTensor (p,), p >= 1; length >= 1 tokens;
    temperature > 0 divides the logits; eos_id: optional absorbing end token.
    Samples are LongTensor (n, length); ``log_prob`` is exact and carries gradients to
    the LM's parameters when autograd is on (REINFORCE and KL terms need that).
    """

    def __init__(self, lm: nn.Module, prompt_ids: Tensor, length: int, temperature: float = 1.0,
                 eos_id: int | None = None, batch_size: int = 64):
        if not callable(lm):
            raise InvalidArgumentError("lm must be a callable causal language model")
        if not isinstance(prompt_ids, Tensor) or prompt_ids.dim() != 1 or prompt_ids.numel() < 1:
            raise ShapeMismatchError("prompt_ids must be a non-empty LongTensor of shape (p,)")
        check_token_ids(prompt_ids, vocab_size(lm), "prompt_ids")
        if not isinstance(length, int) or length < 1:
            raise InvalidArgumentError(f"length must be a positive int, got {length!r}")
        if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
            raise InvalidArgumentError(f"temperature must be a finite number > 0, got {temperature!r}")
        if eos_id is not None and (not isinstance(eos_id, int) or eos_id < 0):
            raise InvalidArgumentError(f"eos_id must be a non-negative int or None, got {eos_id!r}")
        if eos_id is not None:
            check_token_ids(torch.tensor([eos_id]), vocab_size(lm), "eos_id")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        self.lm = lm
        self.prompt_ids = prompt_ids.long()
        self.length = length
        self.temperature = float(temperature)
        self.eos_id = eos_id
        self.batch_size = batch_size
        self.event_shape = (length,)
        #: sequences written or scored by the LM so far (one LM call each)
        self.lm_calls = 0

    @property
    def is_discrete(self) -> bool:
        return True

    @property
    def _device(self) -> torch.device:
        first = next(iter(self.lm.parameters()), None) if isinstance(self.lm, nn.Module) else None
        return first.device if first is not None else torch.device("cpu")

    # --- sampling ---------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n sequences, LongTensor (n, length) on the CPU, drawn token by token (batched)."""
        return self.sample_steered(n, generator, lambda t, log_d, start: _draw(log_d, generator))

    def sample_steered(self, n: int, generator: torch.Generator, draw: TokenDraw) -> Tensor:
        """n sequences (n, length) whose token t is ``draw(t, log_d, start)`` instead of a draw from D.

        log_d (b, vocab), float64: D's conditional log-probabilities of token t for rows
        start..start + b of this call (with eos absorbing), from which ``draw`` returns
        tokens (b,). An importance-sampling proposal that reweights D's conditionals
        samples through this, and learns log p_D of what it drew at no extra LM call.
        """
        if not isinstance(n, int) or n < 0:
            raise InvalidArgumentError(f"n must be a non-negative int, got {n!r}")
        parts = []
        for start in range(0, n, self.batch_size):
            b = min(self.batch_size, n - start)
            empty = torch.zeros(b, 0, dtype=torch.long)
            parts.append(self._continue(empty, self.length, partial(draw, start=start)))
        return torch.cat(parts) if parts else torch.zeros(0, self.length, dtype=torch.long)

    def _continue(self, head: Tensor, steps: int, draw: Callable[..., Tensor]) -> Tensor:
        """head (b, t) followed by ``steps`` tokens from ``draw(t, log_d)``: (b, t + steps), CPU.

        Counts b LM calls (one sequence written).
        """
        b, t0 = head.shape
        done = (head == self.eos_id).any(1) if self.eos_id is not None else torch.zeros(b, dtype=torch.bool)
        position = [t0]

        def choose(logits: Tensor) -> Tensor:
            log_d = torch.log_softmax(logits.float().cpu() / self.temperature, dim=-1).double()
            if not torch.isfinite(log_d).any(1).all() or torch.isnan(log_d).any():
                raise ModelOutputError("the language model returned NaN or inf logits while sampling")
            if self.eos_id is not None:
                absorbed = torch.full_like(log_d, -math.inf)
                absorbed[:, self.eos_id] = 0.0
                log_d = torch.where(done[:, None], absorbed, log_d)
            nxt = draw(position[0], log_d)
            if self.eos_id is not None:
                done.logical_or_(nxt == self.eos_id)
            position[0] += 1
            return nxt.to(self._device)

        self.lm_calls += b
        tail = decode(self.lm, self.prompt_ids.to(self._device), head.to(self._device), steps, choose).cpu()
        return torch.cat([head.cpu(), tail], dim=1)

    def propose(self, x: Tensor, step: Tensor, generator: torch.Generator) -> Tensor:
        """Suffix move: redraw each row's last k tokens from the LM given the tokens before them.

        k = 1 + Binomial(length - 1, step) per row, drawn without looking at x. For a fixed
        k, p_D(x) q(x' | x) = p_D(x_<t) p_D(x_t: | x_<t) p_D(x'_t: | x_<t) is symmetric in x and
        x', so the move is reversible with respect to D (splitting accepts it iff the score
        stays on the level). One LM call per row.
        """
        self.check_inputs(x)
        n = x.shape[0]
        with torch.no_grad():
            k = 1 + torch.binomial(torch.full((n,), float(self.length - 1)),
                                   step.double().clamp(0.0, 1.0).float().cpu(), generator=generator).long()
            out = x.clone().cpu()
            for keep in torch.unique(self.length - k).tolist():
                rows = torch.nonzero(self.length - k == keep).flatten()
                for chunk in rows.split(self.batch_size):
                    redrawn = self._continue(out[chunk, :keep], self.length - keep,
                                             lambda t, log_d: _draw(log_d, generator))
                    out[chunk] = redrawn
        return out

    # --- densities ----------------------------------------------------------------------------
    def token_log_probs(self, x: Tensor) -> Tensor:
        """Per-token log-probabilities (n, length), float64; after eos: 0 if eos again, else -inf."""
        self.check_inputs(x)
        parts = [self._token_log_probs_batch(x[i : i + self.batch_size])
                 for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, self.length, dtype=torch.float64)

    def _token_log_probs_batch(self, x: Tensor) -> Tensor:
        self.lm_calls += x.shape[0]
        ids = x.long().to(self._device)
        logits = continuation_logits(self.lm, self.prompt_ids.to(self._device), ids[:, :-1], self.length)
        # float32 log-softmax, then float64: the double copy of (n, length, vocab) is not needed
        scaled = logits.float() / self.temperature
        picked = scaled.gather(2, ids[:, :, None]).squeeze(2)
        terms = (picked.double() - torch.logsumexp(scaled, dim=-1).double()).cpu()
        if self.eos_id is None:
            return terms
        x = x.cpu()
        after = torch.cumsum((x == self.eos_id).long(), dim=1) - (x == self.eos_id).long() > 0
        absorbed = torch.where(x == self.eos_id, 0.0, -math.inf).to(terms.dtype)
        return torch.where(after, absorbed, terms)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact sequence log-probabilities (n,), float64."""
        return self.token_log_probs(x).sum(1)

    def check_inputs(self, x: Tensor, name: str = "x") -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.length:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeMismatchError(
                f"{name} has shape {shape}; LMDistribution expects token ids (n, {self.length})"
            )
        check_token_ids(x, vocab_size(self.lm), name)
        return x

    def __repr__(self) -> str:
        return (f"LMDistribution(prompt={self.prompt_ids.numel()} tokens, length={self.length}, "
                f"temperature={self.temperature:g})")
