"""WindowedMaskFamily: a mask of bounded area inside one small window, and the search that builds it."""

import pytest
import torch

from tailguard.errors import InvalidArgumentError, ShapeMismatchError
from tailguard.families.masked import MaskedPatternFamily
from tailguard.families.masked_window import WindowedMaskFamily
from tailguard.families.patch import PatchFamily
from tailguard.scan.searches import windowed_search


def _base(shape=(5, 8, 8)):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def test_every_candidate_mask_stays_within_its_area_and_its_window():
    g = torch.Generator().manual_seed(1)
    family = WindowedMaskFamily(_base(), area=9.0, window=5, noise_std=0.01)
    assert len(family.positions) == 16
    for params in family.candidates(40, g):
        mask = family.mask(params).detach()
        row, col = int(params["row"]), int(params["col"])
        assert mask.shape == (8, 8)
        assert float(mask.sum()) <= 9.0 + 1e-9 and float(mask.max()) <= 1.0
        outside = torch.ones(8, 8, dtype=torch.bool)
        outside[row : row + 5, col : col + 5] = False
        assert float(mask[outside].abs().max()) == 0.0
    starts = family.candidates(17, g)
    assert [(int(p["row"]), int(p["col"])) for p in (starts[0], starts[16])] == [(0, 0), (0, 0)]
    assert (int(starts[15]["row"]), int(starts[15]["col"])) == (3, 3)


def test_a_full_mask_on_nine_pixels_of_the_window_is_the_square_patch():
    """The family holds every 3x3 patch: nine saturated mask pixels write the pattern exactly."""
    base = _base()
    family = WindowedMaskFamily(base, area=9.0, window=5, noise_std=0.01)
    logits = torch.full((5, 5), -40.0, dtype=torch.float64)
    logits[1:4, 2:5] = 40.0
    values = torch.rand(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pattern = torch.zeros(8, 8, dtype=torch.float64)
    pattern[3:6, 4:7] = values
    params = {"row": torch.tensor(2), "col": torch.tensor(2), "mask_logits": logits,
              "pattern_logits": torch.logit(pattern.clamp(1e-9, 1 - 1e-9))}
    square = PatchFamily(base, 3, 0.01)
    expected = square.member(square.params_at(3, 4, values)).points
    assert torch.allclose(family.member(params).points, expected, atol=1e-6)
    described = family.describe(params)
    assert (described["row"], described["col"], described["window"]) == (2, 2, 5)


def test_images_with_channels_share_one_mask():
    g = torch.Generator().manual_seed(3)
    family = windowed_search(6, 4).build(_base((5, 3, 8, 8)))
    assert isinstance(family, WindowedMaskFamily) and isinstance(family, MaskedPatternFamily)
    params = family.candidates(1, g)[0]
    assert family.member(params).points.shape == (5, 3, 8, 8)
    assert params["mask_logits"].shape == (4, 4)
    assert "inside one 4x4 window at any of 25 places" in family.constraint()


@pytest.mark.parametrize(
    "area, window, words",
    [(9.0, 9, "window"), (9.0, 0, "window"), (9.0, True, "window"), (10.0, 3, "exceeds"), (0.0, 3, "area")],
)
def test_bad_settings_get_a_clear_error(area, window, words):
    with pytest.raises(InvalidArgumentError, match=words):
        WindowedMaskFamily(_base(), area, window, 0.01)


def test_a_flat_base_is_refused():
    with pytest.raises(ShapeMismatchError):
        WindowedMaskFamily(torch.rand(5, 64), 4.0, 3, 0.01)
