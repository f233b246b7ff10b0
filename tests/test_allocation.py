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


def test_cycles_made_inside_are_collected_when_the_block_ends() -> None:
    class Node:
        pass

    with collector_paused():
        a, b = Node(), Node()
        a.other, b.other = b, a  # type: ignore[attr-defined]
        del a, b
        assert any(type(o) is Node for o in gc.get_objects())
    assert not any(type(o) is Node for o in gc.get_objects())
