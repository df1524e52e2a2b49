"""Baseline trojan detectors, written from their papers, judged on the trojan zoo beside ``tg.scan``.

Each takes a classifier, clean images (N, H, W) or (N, C, H, W) in [0, 1] and
optional labels, and returns a DetectorVerdict (score: larger = more likely
trojaned; the suspected target; the recovered trigger area; seconds)::

    from tailguard.bench.detectors import neural_cleanse, abs_scan
    verdict = neural_cleanse(model, images, labels, seed=0)

No maintained PyTorch implementation installs and runs here: the Adversarial
Robustness Toolbox's Neural Cleanse accepts Keras classifiers only, and the
``trojanzoo`` package on PyPI ships the framework without its detectors.
"""

from .abs import AbsSettings, abs_scan
from .neural_cleanse import NeuralCleanseSettings, neural_cleanse
from .verdict import DetectorVerdict

__all__ = ["AbsSettings", "DetectorVerdict", "NeuralCleanseSettings", "abs_scan", "neural_cleanse"]
