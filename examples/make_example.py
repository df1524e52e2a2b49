"""Write examples/digits_mlp.safetensors: the weights that examples/case.toml loads.

The model is tailguard's built-in digits classifier (an MLP trained for a few
seconds on scikit-learn's 8x8 digits, deterministic for a given seed). The
weights file embeds the [model] table that rebuilds the architecture, so the
file alone says how to use it. Run from anywhere:

    python examples/make_example.py
"""

from pathlib import Path

from tailguard.models import digits_classifier
from tailguard.weights import save_weights

HERE = Path(__file__).resolve().parent
ARCHITECTURE = {"in_dim": 64, "hidden": 32, "out_dim": 10, "depth": 2}


def main() -> None:
    model = digits_classifier(hidden=ARCHITECTURE["hidden"], seed=0)
    meta = {
        "factory": "tailguard.models:mlp",
        "kwargs": ARCHITECTURE,
        "trained_by": "tailguard.models:digits_classifier(hidden=32, seed=0)",
    }
    path = save_weights(model, HERE / "digits_mlp.safetensors", metadata=meta)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
