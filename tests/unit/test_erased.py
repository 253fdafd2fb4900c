"""The erased-customer list the service checks: written by erase, followed by the service."""

from __future__ import annotations

import json
from pathlib import Path

from serving.erased import ERASED_FILE, ErasedCustomers, add_erased


def test_an_added_id_is_erased_and_others_are_not(tmp_path: Path) -> None:
    erased = ErasedCustomers(tmp_path, check_every_s=0.0)
    assert "C1" not in erased  # no file yet
    assert add_erased(tmp_path, ["C1", "C2"]) == 2
    assert "C1" in erased and "C2" in erased
    assert "C3" not in erased and "c1" not in erased


def test_adding_again_adds_nothing_and_keeps_the_salt(tmp_path: Path) -> None:
    add_erased(tmp_path, ["C1"])
    before = json.loads((tmp_path / ERASED_FILE).read_text())
    assert add_erased(tmp_path, ["C1"]) == 0
    assert add_erased(tmp_path, ["C9"]) == 1
    after = json.loads((tmp_path / ERASED_FILE).read_text())
    assert after["salt"] == before["salt"] and len(after["hashes"]) == 2


def test_the_file_holds_no_id_in_clear(tmp_path: Path) -> None:
    add_erased(tmp_path, ["C000000042"])
    assert "C000000042" not in (tmp_path / ERASED_FILE).read_text()


def test_the_service_side_sees_a_later_erasure_after_its_check_interval(tmp_path: Path) -> None:
    erased = ErasedCustomers(tmp_path, check_every_s=3600.0)
    assert "C1" not in erased  # looked now: nothing
    add_erased(tmp_path, ["C1"])
    assert "C1" not in erased  # not looked again yet: the interval bounds the cost per request
    erased.check_every_s = 0.0
    assert "C1" in erased


def test_a_broken_file_keeps_the_last_good_list(tmp_path: Path) -> None:
    erased = ErasedCustomers(tmp_path, check_every_s=0.0)
    add_erased(tmp_path, ["C1"])
    assert "C1" in erased
    (tmp_path / ERASED_FILE).write_text("{not json")
    assert "C1" in erased
