"""CellArray behaviour a user relies on beyond the reference equivalence."""

import pytest
import torch

import memsim


def test_fresh_cells_are_in_hrs_and_a_reset_pulse_leaves_them_there(device):
    cells = memsim.CellArray(500, generator=torch.Generator(device=device).manual_seed(0))
    fresh = cells.resistance()
    torch.testing.assert_close(fresh, cells.hrs, rtol=1e-4, atol=0)
    cells.apply_voltage(1.2)  # a RESET pulse on fresh cells: defined, and changes nothing
    torch.testing.assert_close(cells.resistance(), fresh)
    assert int(cells.cycle_count.sum()) == 0


def test_set_reaches_lrs_and_full_reset_starts_a_new_cycle(device):
    cells = memsim.CellArray(500, generator=torch.Generator(device=device).manual_seed(0))
    lrs = cells.lrs
    cells.apply_voltage(-2.5)
    torch.testing.assert_close(cells.resistance(), lrs, rtol=1e-4, atol=0)
    cells.apply_voltage(1.46)
    assert bool((cells.cycle_count == 1).all())
    torch.testing.assert_close(cells.resistance(), cells.hrs, rtol=1e-4, atol=0)
    ratio = cells.resistance() / lrs
    assert bool((ratio > 2).all()) and float(ratio.median()) > 10


def test_per_cell_voltages_switch_only_their_cells(device):
    cells = memsim.CellArray(4, generator=torch.Generator(device=device).manual_seed(0))
    before = cells.resistance()
    cells.apply_voltage(torch.tensor([-2.5, 0.0, -2.5, 0.1], device=device))
    after = cells.resistance()
    assert bool((after[[0, 2]] < before[[0, 2]] / 5).all())
    torch.testing.assert_close(after[[1, 3]], before[[1, 3]])


def test_same_seed_same_cells_different_seed_different_cells(device):
    def run(seed):
        cells = memsim.CellArray(1000, generator=torch.Generator(device=device).manual_seed(seed))
        for u in (-2.0, 1.0, 1.46, -2.0):
            cells.apply_voltage(u)
        return cells.resistance(), cells.read(0.2)

    first, again, other = run(1), run(1), run(2)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_state_is_at_most_230_bytes_per_cell_at_p10():
    cells = memsim.CellArray(1000)
    assert cells.state_bytes() / len(cells) <= 230
    assert memsim.CellArray(1000, params=memsim.load_params(p=1)).state_bytes() / 1000 == 230 - 4 * 4 * 9


def test_accessors_are_copies():
    cells = memsim.CellArray(10)
    us = cells.us
    cells.apply_voltage(-2.0).apply_voltage(1.46)
    assert not torch.equal(us, cells.us)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_cell_count(n):
    with pytest.raises(ValueError, match="positive number of cells"):
        memsim.CellArray(n)


def test_bad_voltage_shape():
    cells = memsim.CellArray(10)
    with pytest.raises(ValueError, match=r"shape \(10,\), got \(3,\)"):
        cells.apply_voltage(torch.zeros(3))
