"""Language models: the real small LM, text models behind the model interface, text specs, LoRA training."""

from .hf import NextTokenLogits, chat_policy, chat_template_parts
from .smollm2 import load_smollm2
from .specs import CheckerFlags, ContinuationMatches, NextTokenIn
from .training import AdversarySettings, PolicySettings, add_lora, harden_policy, train_adversary

__all__ = [
    "AdversarySettings",
    "CheckerFlags",
    "ContinuationMatches",
    "NextTokenIn",
    "NextTokenLogits",
    "PolicySettings",
    "add_lora",
    "chat_policy",
    "chat_template_parts",
    "harden_policy",
    "load_smollm2",
    "train_adversary",
]
