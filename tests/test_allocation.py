"""The linkage pauses the cyclic garbage collector only for as long as it works."""

from __future__ import annotations

import gc

import pytest

from matching.allocation import collector_paused


def test_collector_is_off_inside_and_back_on_after() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested: the inner block must not switch it back on
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_collector_is_back_on_after_an_error() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("linkage failed")
    assert gc.isenabled()


def test_as_a_decorator_each_call_pauses_and_restores() -> None:
    seen = []

    @collector_paused()
    def work() -> None:
        seen.append(gc.isenabled())

    work()
    work()  # a second call gets a fresh pause, not a spent one
    assert seen == [False, False]
    assert gc.isenabled()
