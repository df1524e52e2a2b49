"""Language models: the real small LM, text models behind the model interface, text specs, LoRA training."""

from .adversary import AdversaryResult, AdversarySettings, LMAdversary, train_adversary
from .forecast import forecast_log_p, forecast_worst_query_risk
from .harden import HardenResult, LMPolicy, PolicySettings, Round, harden_policy, play_rounds
from .hf import NextTokenLogits, ReplyLogProb, chat_policy, chat_template_parts
from .measure import PolicyReport, policy_report
from .prompts import chat_prompt
from .smollm2 import load_smollm2
from .specs import CheckerFlags, ContinuationMatches, JudgeAbove, NextTokenIn, SampledTokenIn, lm_verdict
from .training import add_lora

__all__ = [
    "AdversaryResult",
    "AdversarySettings",
    "CheckerFlags",
    "ContinuationMatches",
    "HardenResult",
    "LMAdversary",
    "LMPolicy",
    "JudgeAbove",
    "NextTokenIn",
    "NextTokenLogits",
    "PolicyReport",
    "PolicySettings",
    "Round",
    "ReplyLogProb",
    "SampledTokenIn",
    "add_lora",
    "chat_policy",
    "chat_prompt",
    "chat_template_parts",
    "forecast_log_p",
    "forecast_worst_query_risk",
    "harden_policy",
    "lm_verdict",
    "load_smollm2",
    "play_rounds",
    "policy_report",
    "train_adversary",
]
