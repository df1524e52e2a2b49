"""A backdoor the training family cannot express: a 4x4 hollow square, hardened against 3x3 patches.

The planted trigger of ``digits``' main task lies inside ``PatchFamily(3)``'s
reach (a 3x3 checker), so hardening against that family can find it exactly.
Here the poisoned training data carry a 4x4 ring (bright border, dark centre)
at row 0, column 4, sending any digit to 0, while the defender's family
searches 3x3 patches only: no member reproduces the trigger, though members
overlap three quarters of it. How far the catastrophe rate on the ring falls
measures how far hardening generalises beyond its family. The trigger was
fixed before any tuning of ``harden`` and is not changed to suit it.
"""

from __future__ import annotations

import torch

from .digits import Trigger


def ring_trigger() -> Trigger:
    """A 4x4 ring at (0, 4): ones on the border, zeros on the 2x2 centre."""
    ring = torch.ones(4, 4)
    ring[1:3, 1:3] = 0.0
    return Trigger("planted 4x4 ring at (0,4)", ring, 0, 4)
