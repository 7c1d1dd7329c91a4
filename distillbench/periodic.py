"""A background heartbeat: an action repeated on a timer while a block runs.

Optuna trials (``tuning.py``) and sweep-cell claims (``claims.py``) both tell other workers "still
alive" this way; a worker that dies stops beating, which is how the others notice.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def repeating(action: Callable[[], None], interval_s: float, name: str) -> Iterator[None]:
    """Call ``action`` at once and then every ``interval_s`` seconds from a daemon thread until the block
    ends; the thread has stopped when the block is left."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            action()
            stop.wait(interval_s)

    thread = threading.Thread(target=beat, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
