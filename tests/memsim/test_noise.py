"""Read noise: relative sigma at 0.2 V per mode, measured from repeated reads of the same cells."""

import pytest
import torch

import memsim


def relative_sigma(cells, mode, reads=400):
    currents = torch.stack([cells.read(0.2, noise=mode) for _ in range(reads)])
    return float((currents.std(0) / currents.mean(0)).median())


@pytest.fixture
def lrs_and_hrs(device):
    generator = torch.Generator(device=device).manual_seed(11)
    lrs = memsim.CellArray(2000, generator=generator).apply_voltage(-2.0)
    hrs = memsim.CellArray(2000, generator=generator).apply_voltage(-2.0).apply_voltage(1.46)
    return lrs, hrs


def test_physical_noise_at_read_voltage(lrs_and_hrs):
    # 0.095 % (LRS) and 0.39 % (HRS) at 0.2 V: Synaptogen's physical noise (docs/device_facts.md).
    lrs, hrs = lrs_and_hrs
    assert relative_sigma(lrs, "physical") == pytest.approx(0.00095, rel=0.08)
    assert relative_sigma(hrs, "physical") == pytest.approx(0.0039, rel=0.08)
    assert relative_sigma(lrs, True) == pytest.approx(relative_sigma(lrs, "physical"), rel=0.15)


def test_paper_noise_is_about_forty_times_physical(lrs_and_hrs):
    lrs, _ = lrs_and_hrs
    ratio = relative_sigma(lrs, "paper") / relative_sigma(lrs, "physical")
    expected = (
        memsim.READ_NOISE_MODES["paper"].variance_per_siemens(0.2)
        / memsim.READ_NOISE_MODES["physical"].variance_per_siemens(0.2)
    ) ** 0.5
    assert 30 < expected < 45
    assert ratio == pytest.approx(expected, rel=0.1)


def test_no_noise_reads_the_noiseless_current(lrs_and_hrs):
    lrs, _ = lrs_and_hrs
    torch.testing.assert_close(lrs.read(0.2, noise="none"), lrs.current(0.2))
    torch.testing.assert_close(lrs.read(0.2, noise=False), lrs.current(0.2))


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="'loud'"):
        memsim.read_noise("loud")
