"""The warning before a run on the CPU whose training copies cannot fit in memory."""

from swsl_cli.runner import memory


def test_the_machine_reports_its_free_memory():
    free = memory.available_bytes()
    assert free is not None and 0 < free < 1 << 50


def test_a_model_that_fits_says_nothing():
    assert memory.shortfall(383_290, 100_000 * 64, ema=True, available=8 * memory.GIB) is None
    assert memory.shortfall(10**9, 0, ema=True, available=None) is None  # unknown: no guess


def test_a_model_that_does_not_fit_is_named_with_what_it_needs_and_what_is_free():
    # 374 M parameters, as --layer local --image_size 300: four float32 copies with the
    # weight average (gradients, Adam's two moments, the average), three without; and
    # every activation twice (the value, its gradient).
    warning = memory.shortfall(374_000_000, 0, ema=True, available=2 * memory.GIB)
    assert warning.startswith("training 374,000,000 parameters needs at least 5.6 GiB more memory")
    assert "the weight average" in warning and "2.0 GiB is free" in warning
    assert "\n" not in warning
    without = memory.shortfall(374_000_000, 0, ema=False, available=2 * memory.GIB)
    assert "at least 4.2 GiB" in without and "weight average" not in without
    batch = memory.shortfall(0, 2**28, ema=False, available=2 * memory.GIB)
    assert "at least 2.0 GiB" in batch  # 2^28 values and their gradients
    # Runs peaked at 1.5 x the lower bound and more: the warning comes from there on.
    assert memory.shortfall(374_000_000, 0, ema=False, available=6 * memory.GIB) is not None
    assert memory.shortfall(374_000_000, 0, ema=False, available=7 * memory.GIB) is None
    assert memory.size(3 << 20) == "3 MiB" and memory.size(3 * memory.GIB // 2) == "1.5 GiB"
