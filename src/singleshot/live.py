"""Reading a live source in a thread and keeping only its newest item.

A camera or a stream produces frames whether or not they are read. Read in the
consumer's own loop, a detector slower than the source would process frames ever
further in the past (the decoder's and the network's buffers fill up). `LatestFrames`
reads in a thread instead and hands the consumer the newest frame only; the ones it was
too slow to take are dropped and counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["LatestFrames"]

T = TypeVar("T")


class LatestFrames(Generic[T]):
    """Iterate over ``items`` read in a background thread: each step yields the newest
    item not yet taken, waiting when there is none.

    Items that arrive while the consumer is busy replace each other; the replaced ones
    are counted in ``dropped``. The last item before the source ends is always
    delivered. An exception raised by the source is raised in the consumer, after the
    items before it. ``close`` (or leaving the ``with`` block) stops the thread after
    the item it is reading. The source is closed in that thread, never under it: a read
    that hangs (a silent stream) cannot make ``close`` hang or free what it reads.

    Args:
        items: the source, e.g. `singleshot.video.VideoReader.frames()`.
        on_finish: called in the thread once it is done with ``items`` (e.g. the reader's
            ``close``).
    """

    def __init__(self, items: Iterator[T], on_finish: Callable[[], object] | None = None) -> None:
        self.dropped = 0
        self._items = items
        self._on_finish = on_finish
        self._latest: list[T] = []  # empty or one item, guarded by _ready
        self._ready = threading.Condition()
        self._finished = False
        self._stopping = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._pull, name="singleshot-latest-frames", daemon=True)
        self._thread.start()

    def _pull(self) -> None:
        try:
            for item in self._items:
                with self._ready:
                    if self._stopping:
                        break
                    self.dropped += len(self._latest)
                    self._latest[:] = [item]
                    self._ready.notify()
        except BaseException as error:  # handed to the consumer, raised there
            self._error = error
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
            if self._on_finish is not None:
                self._on_finish()
            with self._ready:
                self._finished = True
                self._ready.notify()

    def __iter__(self) -> Iterator[T]:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: bool(self._latest) or self._finished)
                if not self._latest:
                    if self._error is not None:
                        raise self._error
                    return
                item = self._latest.pop()
            yield item

    def close(self, timeout: float | None = 2.0) -> bool:
        """Stop reading: the thread ends after the read it is in. Waits up to ``timeout``
        seconds (None = as long as it takes) for that; returns whether it has ended (if not,
        it ends, and closes the source, when the read returns or times out)."""
        with self._ready:
            self._stopping = True
            self._latest.clear()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> LatestFrames[T]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
