"""Tasks with planted rare catastrophes, used by the harden benchmark and the demo."""
