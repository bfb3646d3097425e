"""The warning before a run on the CPU whose training copies cannot fit in memory."""

import pytest

from swsl_cli.runner import memory


def test_the_machine_reports_its_free_memory():
    free = memory.available_bytes()
    assert free is not None and 0 < free < 1 << 50


def test_a_model_that_fits_says_nothing():
    assert memory.shortfall(383_290, 100_000 * 64, ema=True, available=8 * memory.GIB) is None
    assert memory.shortfall(10**9, 0, ema=True, available=None) is None  # unknown: no guess


def test_a_model_that_does_not_fit_is_named_with_what_it_needs_and_what_is_free():
    # 374 M parameters, about --layer local --image_size 300's 377 M: four float32 copies with the
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


def test_a_restored_optimizer_state_and_half_precision_activations_lower_the_need():
    # Resumed: Adam's moments and the average (3 copies) are allocated already.
    fresh = memory.shortfall(374_000_000, 0, ema=True, available=1 << 20)
    resumed = memory.shortfall(374_000_000, 0, ema=True, available=1 << 20, held=3 * 374_000_000)
    assert "at least 5.6 GiB" in fresh and "at least 1.4 GiB" in resumed
    half = memory.shortfall(0, 2**28, ema=False, available=1 << 20, activation_bytes=2)
    assert "at least 1.0 GiB" in half


def cgroup_tree(root, limit, usage, cache_key, cache):
    root.mkdir(parents=True)
    names = (
        ("memory.max", "memory.current")
        if cache_key == "inactive_file"
        else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    )
    (root / names[0]).write_text(f"{limit}\n")
    (root / names[1]).write_text(f"{usage}\n")
    (root / "memory.stat").write_text(f"anon 1\n{cache_key} {cache}\n")


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_cgroup_limit_caps_the_free_memory_with_its_page_cache_counted_free(
    tmp_path, monkeypatch, version
):
    own = "/jobs/a"
    proc = tmp_path / "cgroup"
    proc.write_text("0::/jobs/a\n" if version == "v2" else "4:memory:/jobs/a\n1:cpu:/\n")
    monkeypatch.setattr(memory, "PROC_CGROUP", str(proc))
    root = tmp_path / version
    files = dict(memory.CGROUP_FILES)
    files[version] = (str(root), *files[version][1:])
    monkeypatch.setattr(memory, "CGROUP_FILES", files)
    key = files[version][3]
    cgroup_tree(root / own.strip("/"), 3 * memory.GIB, 2 * memory.GIB, key, memory.GIB // 2)
    assert memory._cgroup_free() == 3 * memory.GIB // 2  # 3 GiB limit, 2 used, half of it cache
    assert memory.available_bytes() <= 3 * memory.GIB // 2


def test_a_cgroup_without_a_limit_or_files_leaves_the_system_figure(tmp_path, monkeypatch):
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/elsewhere\n")
    monkeypatch.setattr(memory, "PROC_CGROUP", str(proc))
    files = dict(memory.CGROUP_FILES)
    files["v1"] = (str(tmp_path / "v1"), *files["v1"][1:])
    monkeypatch.setattr(memory, "CGROUP_FILES", files)
    assert memory._cgroup_free() is None  # no files there
    cgroup_tree(tmp_path / "v1", 9223372036854771712, memory.GIB, "total_inactive_file", 0)
    assert memory._cgroup_free() is None  # v1's "no limit", at the mount's root
