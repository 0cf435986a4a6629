"""Provenance: the commit and dirty flag of the checkout, and what a record says about where a stage ran."""

from __future__ import annotations

import subprocess

import pytest
import torch

from pipeline.provenance import code_version, provenance


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "checkout"
    root.mkdir()
    git(root, "init", "-q")
    (root / "tracked.py").write_text("x = 1\n")
    git(root, "add", "tracked.py")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    code_version.cache_clear()
    yield root
    code_version.cache_clear()


def test_clean_checkout_records_its_commit(checkout):
    (checkout / "untracked-output.parquet").write_text("runs write here")  # not a change to the code
    assert code_version(checkout) == {"commit": git(checkout, "rev-parse", "HEAD"), "dirty": False}


def test_edited_tracked_file_marks_the_checkout_dirty(checkout):
    (checkout / "tracked.py").write_text("x = 2\n")
    assert code_version(checkout) == {"commit": git(checkout, "rev-parse", "HEAD"), "dirty": True}


def test_folder_inside_another_repository_is_not_taken_for_a_checkout(checkout):
    inner = checkout / "site-packages"
    inner.mkdir()
    assert code_version(inner) == {"commit": None, "dirty": None}


def test_folder_outside_any_repository_has_no_commit(tmp_path):
    code_version.cache_clear()
    assert code_version(tmp_path) == {"commit": None, "dirty": None}


def test_record_names_processes_device_and_dtype(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    record = provenance(torch.device("cpu"), torch.bfloat16)
    assert record == {**code_version(), "world_size": 4, "device": "cpu", "dtype": "bfloat16"}
    assert provenance(world_size=2)["world_size"] == 2
    monkeypatch.delenv("WORLD_SIZE")
    assert provenance() == {**code_version(), "world_size": 1, "device": None, "dtype": None}
