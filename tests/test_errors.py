"""ot_gen.errors: the finite test every NaN/Inf check uses."""

from __future__ import annotations

import pytest
import torch

from ot_gen.errors import all_finite


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_all_finite_finds_one_bad_entry_in_a_cost_matrix(bad):
    C = torch.rand(256, 256, dtype=torch.float64)
    assert all_finite(C)
    C[17, 200] = bad
    assert not all_finite(C)


def test_all_finite_holds_for_finite_entries_whose_sum_overflows():
    assert all_finite(torch.full((4,), 1e308, dtype=torch.float64))  # the sum is inf, every entry finite
    assert all_finite(torch.full((3,), 6e4, dtype=torch.float16))
    assert all_finite(torch.arange(5))  # integers are finite
