"""Thread counts chosen from the free cores, and the user's settings respected."""

import os
import subprocess
import sys

import pytest
import torch

from initlens.models import threads


@pytest.mark.parametrize(
    "cores, busy, expected", [(2, 0, 2), (2, 1, 1), (2, 0.4, 2), (2, 5, 1), (16, 3, 13), (4, -1, 4)]
)
def test_free_cores(cores, busy, expected):
    assert threads.free_cores(cores, busy) == expected


def test_user_setting_wins(monkeypatch):
    monkeypatch.setenv("INITLENS_THREADS", "3")
    assert threads.chosen_threads() == 3


def test_default_leaves_the_count_alone(monkeypatch):
    """The count changes the last bits of results, so it changes only when asked."""
    monkeypatch.delenv("INITLENS_THREADS", raising=False)
    assert threads.chosen_threads() is None


def test_auto_takes_the_free_cores(monkeypatch):
    monkeypatch.setenv("INITLENS_THREADS", "auto")
    monkeypatch.setattr(threads, "running_elsewhere", lambda: 1.0)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.chosen_threads() == 1


@pytest.mark.parametrize("value", ["many", "0", "-2", "1.5"])
def test_bad_user_setting_warns_and_changes_nothing(monkeypatch, value):
    monkeypatch.setenv("INITLENS_THREADS", value)
    with pytest.warns(UserWarning, match="INITLENS_THREADS"):
        assert threads.chosen_threads() is None


def test_configure_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_running_elsewhere_is_a_count():
    busy = threads.running_elsewhere(samples=3, interval_s=0.001)
    assert busy >= 0 and busy == int(busy)  # the median of an odd number of counts


def test_import_sets_wait_policy_and_threads():
    """A fresh process importing initlens sleeps idle threads and takes the user's count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "INITLENS_"))}
    env["INITLENS_THREADS"] = "1"
    code = (
        "import os, initlens, torch; print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.split() == ["PASSIVE", "1"]
