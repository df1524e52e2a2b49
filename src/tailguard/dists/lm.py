"""Token sequences written by an autoregressive language model: D for text inputs.

An LM continuing a prompt at some temperature defines a distribution over the
next ``length`` tokens with an exact log-probability (the sum of its per-token
log-softmax terms), so it serves as D itself (the messages a deployed model sees)
and as an importance-sampling proposal (an adversary's messages). Sequences have a
fixed length so that they batch: once ``eos_id`` is drawn, every later position is
``eos_id`` with probability 1.

The LM is any Hugging Face-style causal model: ``lm(input_ids=ids)`` returning an
object with ``.logits`` (n, t, vocab), or such a tensor directly. Models that return
``past_key_values`` are sampled with a KV cache.
"""

from __future__ import annotations

import inspect
import math
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
        if prompt_ids.is_floating_point():
            raise InvalidArgumentError("prompt_ids must hold integer token ids")
        if not isinstance(length, int) or length < 1:
            raise InvalidArgumentError(f"length must be a positive int, got {length!r}")
        if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
            raise InvalidArgumentError(f"temperature must be a finite number > 0, got {temperature!r}")
        if eos_id is not None and (not isinstance(eos_id, int) or eos_id < 0):
            raise InvalidArgumentError(f"eos_id must be a non-negative int or None, got {eos_id!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        self.lm = lm
        self.prompt_ids = prompt_ids.long()
        self.length = length
        self.temperature = float(temperature)
        self.eos_id = eos_id
        self.batch_size = batch_size
        self.event_shape = (length,)

    @property
    def is_discrete(self) -> bool:
        return True

    @property
    def _device(self) -> torch.device:
        first = next(iter(self.lm.parameters()), None) if isinstance(self.lm, nn.Module) else None
        return first.device if first is not None else torch.device("cpu")

    @property
    def _takes_cache(self) -> bool:
        """Whether the LM's forward accepts ``use_cache`` (Hugging Face models do)."""
        forward = getattr(self.lm, "forward", self.lm)
        params = inspect.signature(forward).parameters.values()
        return any(p.name == "use_cache" or p.kind is p.VAR_KEYWORD for p in params)

    # --- sampling ---------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n sequences, LongTensor (n, length), drawn token by token (batched)."""
        if not isinstance(n, int) or n < 0:
            raise InvalidArgumentError(f"n must be a non-negative int, got {n!r}")
        with torch.no_grad():
            parts = [self._sample_batch(min(self.batch_size, n - i), generator)
                     for i in range(0, n, self.batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, self.length, dtype=torch.long)

    def _sample_batch(self, b: int, generator: torch.Generator) -> Tensor:
        ids = self.prompt_ids.to(self._device).expand(b, -1)
        out = self.lm(input_ids=ids, use_cache=True) if self._takes_cache else self.lm(input_ids=ids)
        cache = getattr(out, "past_key_values", None)
        tokens = torch.empty(b, self.length, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        for t in range(self.length):
            logits = lm_logits(out)[:, -1].float().cpu() / self.temperature
            probs = torch.softmax(logits, dim=-1)
            if not torch.isfinite(probs).all():
                raise ModelOutputError("the language model returned NaN or inf logits while sampling")
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            if self.eos_id is not None:
                nxt = torch.where(done, self.eos_id, nxt)
                done |= nxt == self.eos_id
            tokens[:, t] = nxt
            if t + 1 == self.length:
                break
            step = nxt[:, None].to(self._device)
            if cache is not None:
                out = self.lm(input_ids=step, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
            else:
                out = self.lm(input_ids=torch.cat([ids, tokens[:, : t + 1].to(self._device)], dim=1))
        return tokens

    # --- densities ----------------------------------------------------------------------------
    def token_log_probs(self, x: Tensor) -> Tensor:
        """Per-token log-probabilities (n, length), float64; after eos: 0 if eos again, else -inf."""
        self.check_inputs(x)
        parts = [self._token_log_probs_batch(x[i : i + self.batch_size])
                 for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, self.length, dtype=torch.float64)

    def _token_log_probs_batch(self, x: Tensor) -> Tensor:
        b, p = x.shape[0], self.prompt_ids.numel()
        ids = torch.cat([self.prompt_ids.expand(b, -1), x.long()], dim=1).to(self._device)
        logits = lm_logits(self.lm(input_ids=ids))[:, p - 1 : p - 1 + self.length]
        log_soft = torch.log_softmax(logits.double() / self.temperature, dim=-1)
        terms = log_soft.gather(2, ids[:, p:, None]).squeeze(2).cpu()
        if self.eos_id is None:
            return terms
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
        if x.is_floating_point() or x.dtype == torch.bool:
            raise InvalidArgumentError(f"{name} must hold integer token ids, got dtype {x.dtype}")
        if x.numel() and int(x.min()) < 0:
            raise InvalidArgumentError(f"{name} holds negative token ids")
        return x

    def __repr__(self) -> str:
        return (f"LMDistribution(prompt={self.prompt_ids.numel()} tokens, length={self.length}, "
                f"temperature={self.temperature:g})")
