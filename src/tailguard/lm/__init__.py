"""Language models: the real small LM, text models behind the model interface, text specs."""

from .hf import NextTokenLogits, chat_policy, chat_template_parts
from .smollm2 import load_smollm2
from .specs import CheckerFlags, ContinuationMatches, NextTokenIn

__all__ = [
    "CheckerFlags",
    "ContinuationMatches",
    "NextTokenIn",
    "NextTokenLogits",
    "chat_policy",
    "chat_template_parts",
    "load_smollm2",
]
