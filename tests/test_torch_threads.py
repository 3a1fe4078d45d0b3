"""TORCH_THREADS reaches torch.set_num_threads at the start of ``threadtune serve``, ``threadtune
worker`` and the training program, and is handed to the training program's environment; 0 (the
default) leaves torch alone."""

from __future__ import annotations

import os

import pytest
import torch

import bot.cli.jobs
import bot.cli.serve
import engine.train.program
from bot.cli import main
from engine.jobs.runners import _program_env
from engine.threads import TORCH_THREADS_ENV, apply_torch_threads
from engine.train.kernels import CPU_KERNEL_CACHE_ENTRIES, KERNEL_CACHE_ENV


class Started(Exception):
    """Raised where the entry point would go on to build its services."""


@pytest.fixture
def set_threads(monkeypatch, tmp_path):
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    monkeypatch.setenv("THREADTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(TORCH_THREADS_ENV, raising=False)
    for name in KERNEL_CACHE_ENV:  # set again by the entry point, removed afterwards
        monkeypatch.delenv(name, raising=False)
    return calls


def _stop(*_args, **_kwargs):
    raise Started


@pytest.mark.parametrize(
    ("command", "patch"),
    [(["serve"], (bot.cli.serve, "build_runtime")), (["worker", "--once"], (bot.cli.jobs, "_db"))],
)
def test_serve_and_worker_apply_the_setting_first(set_threads, monkeypatch, command, patch):
    monkeypatch.setattr(*patch, _stop)
    monkeypatch.setenv(TORCH_THREADS_ENV, "1")
    with pytest.raises(Started):
        main(command)
    assert set_threads == [1]
    # the training program the worker starts gets the same count
    assert _program_env()[TORCH_THREADS_ENV] == "1"
    # and the process caps oneDNN's shape caches, as the training program does
    assert all(os.environ[name] == str(CPU_KERNEL_CACHE_ENTRIES) for name in KERNEL_CACHE_ENV)


def test_zero_leaves_torch_its_default(set_threads, monkeypatch):
    monkeypatch.setattr(bot.cli.serve, "build_runtime", _stop)
    with pytest.raises(Started):
        main(["serve"])
    assert set_threads == []
    assert TORCH_THREADS_ENV not in _program_env()
    assert apply_torch_threads(0) == 0 and set_threads == []


def test_the_training_program_applies_it_from_its_environment(set_threads, monkeypatch, tmp_path):
    monkeypatch.setattr(engine.train.program, "run", _stop)
    monkeypatch.setattr(engine.train.program, "data_parallel", lambda _run_dir: (1, "one"))
    events = engine.train.program.events
    monkeypatch.setattr(events, "EVENT_STREAM", events.EVENT_STREAM)  # restored afterwards
    monkeypatch.setattr(events, "claim_stdout", lambda: None)
    monkeypatch.setenv(TORCH_THREADS_ENV, "3")
    with pytest.raises(Started):
        engine.train.program.main([str(tmp_path / "run")])
    assert set_threads == [3]
    monkeypatch.setenv(TORCH_THREADS_ENV, "two")  # not understood: torch's default
    with pytest.raises(Started):
        engine.train.program.main([str(tmp_path / "run")])
    assert set_threads == [3]
