"""One asyncio event loop per connector, in a daemon thread.

The connector's aiohttp session, the signer's optimistic nonce state and its ``asyncio.Lock``
belong to one running loop (an ``asyncio.Lock`` or session used from another loop fails).
A Celery task calls the connector's sync methods many times, so the loop outlives each call: the
Go client is registered once and the nonce is fetched once, not per order (each costs a round trip
or a signer call on the order path).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from venues.base import ReasonCode, VenueError

log = logging.getLogger(__name__)

T = TypeVar("T")


class LoopThread:
    """A private event loop running forever in a daemon thread; sync callers submit coroutines."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait at most ``timeout`` seconds for it.

        A timeout cancels the coroutine and raises ``VenueError(UNAVAILABLE)``: the outcome of
        whatever it was doing is unknown.
        """
        return self.start(coro, timeout)()

    def start(self, coro: Coroutine[Any, Any, T], timeout: float) -> Callable[[], T]:
        """Schedule ``coro`` now and return what waits for it, as :meth:`run` does.

        The caller can work while the coroutine runs; a timeout is raised by the wait.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(f"{self.name}: sync call from inside the connector loop would deadlock")
        if not self.alive:
            coro.close()
            raise VenueError(ReasonCode.UNAVAILABLE, f"{self.name}: connector is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)

        def wait() -> T:
            try:
                return future.result(timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise VenueError(ReasonCode.UNAVAILABLE, f"{self.name}: no answer within {timeout:.1f}s") from None

        return wait

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join the thread; pending tasks are cancelled."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._cancel_all_and_stop)
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s: event loop thread did not stop within %.1fs", self.name, timeout)
            return
        # The thread has left run_forever(): let the cancelled tasks unwind here, then close.
        pending = asyncio.all_tasks(self.loop)
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def _cancel_all_and_stop(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.stop()
