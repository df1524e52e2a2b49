"""Language models: the real small LM, text models behind the model interface, text specs, LoRA training."""

from .adversary import AdversaryResult, AdversarySettings, train_adversary
from .harden import HardenResult, PolicyReport, PolicySettings, harden_policy, policy_report
from .hf import NextTokenLogits, chat_policy, chat_template_parts
from .smollm2 import load_smollm2
from .specs import CheckerFlags, ContinuationMatches, NextTokenIn
from .training import add_lora

__all__ = [
    "AdversaryResult",
    "AdversarySettings",
    "CheckerFlags",
    "ContinuationMatches",
    "HardenResult",
    "NextTokenIn",
    "NextTokenLogits",
    "PolicyReport",
    "PolicySettings",
    "add_lora",
    "chat_policy",
    "chat_template_parts",
    "harden_policy",
    "load_smollm2",
    "policy_report",
    "train_adversary",
]
