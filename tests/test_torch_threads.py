"""The shared one-thread setting of torch: set while any user runs, then restored."""

from __future__ import annotations

import threading

import torch

from ctpress._torch_threads import one_torch_thread


def test_the_count_is_one_inside_and_restored_after() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with one_torch_thread():
            assert torch.get_num_threads() == 1
            with one_torch_thread():
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1  # the outer block still runs
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_concurrent_users_restore_the_count_once_the_last_ends() -> None:
    before = torch.get_num_threads()
    inside, release = threading.Barrier(3), threading.Event()
    seen: list[int] = []

    def user() -> None:
        with one_torch_thread():
            inside.wait()
            release.wait()
            seen.append(torch.get_num_threads())

    try:
        torch.set_num_threads(2)
        threads = [threading.Thread(target=user) for _ in range(2)]
        for t in threads:
            t.start()
        inside.wait()  # both are inside
        release.set()
        for t in threads:
            t.join()
        assert seen == [1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
