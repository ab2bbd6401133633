"""The groups tests/conftest.py gives (scripts/test runs two xdist workers): one per unit module, one per e2e
module and release, and each is the scope its scheduler hands to one worker whole, so a module's boxes are
made once, on one worker, and its tests run there in their order."""

from __future__ import annotations

import pytest

from tests.conftest import group_of, scheduler_class

IDS = [
    ("tests/e2e/test_relay.py::test_x[debian-13-another name]", "tests/e2e/test_relay.py on debian-13"),
    ("tests/e2e/test_relay.py::test_y[debian-13]", "tests/e2e/test_relay.py on debian-13"),
    ("tests/e2e/test_relay.py::test_y[debian-12]", "tests/e2e/test_relay.py on debian-12"),
    ("tests/e2e/test_move.py::test_z", "tests/e2e/test_move.py"),
    ("tests/unit/test_a.py::test_b[debian-12]", "tests/unit/test_a.py"),
    ("tests/unit/test_a.py::Test::test_c[x@y]", "tests/unit/test_a.py"),
]


@pytest.mark.parametrize(("nodeid", "group"), IDS)
def test_each_test_is_in_its_modules_group_as_the_scheduler_reads_it(nodeid: str, group: str) -> None:
    assert group_of(nodeid) == group
    cls = scheduler_class()
    scheduler = cls.__new__(cls)  # _split_scope reads nothing of its state
    assert scheduler._split_scope(nodeid) == group
