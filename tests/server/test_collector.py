"""The garbage collector held off while large values are built, and on again after."""

from __future__ import annotations

import gc
import os
import threading

import pytest

from kvpio_mapping.server import collector


def test_nested_blocks_hold_it_off_until_the_last_ends() -> None:
    assert gc.isenabled()
    with collector.held_off():
        with collector.held_off():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_blocks_of_several_threads_leave_it_on_when_all_end() -> None:
    inside = threading.Barrier(4)
    leave = threading.Event()

    def block() -> None:
        with collector.held_off():
            inside.wait(10)
            leave.wait(10)

    threads = [threading.Thread(target=block) for _ in range(3)]
    for thread in threads:
        thread.start()
    inside.wait(10)
    assert not gc.isenabled()
    leave.set()
    for thread in threads:
        thread.join(10)
    assert gc.isenabled()


def test_a_collector_turned_off_before_stays_off() -> None:
    gc.disable()
    try:
        with collector.held_off():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_child_forked_inside_a_block_has_it_on() -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    read, write = os.pipe()
    with collector.held_off():
        pid = os.fork()
        if pid == 0:  # the child: report and leave at once
            os.write(write, b"1" if gc.isenabled() else b"0")
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1"
