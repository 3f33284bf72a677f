"""torch's intra-op thread count, lowered to one while some work runs.

Many small torch operations (a GOP's decoder, view by view; the back-projection's
workers, one per core) run faster on one thread each than with OpenMP teams, which
spend more on their barrier than on the work.  The count is process-wide, so concurrent
users share one setting: the first sets it to one, the last restores it.  torch is
imported only when the block is entered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_users = 0
_saved_threads = 0


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(1)``; the count the process had is
    restored when the last block that is running concurrently ends."""
    import torch

    global _users, _saved_threads
    with _lock:
        if _users == 0:
            _saved_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                torch.set_num_threads(_saved_threads)
