"""The async-invocation poller: queued events in, Runtime.invoke, results out.

Events are committed to the queue before the 202; the poller marks them
running, invokes, and records the outcome. Those still running when the
server stops are put back (a graceful stop) or found running at the next
start (a kill) and run again: at least once, normally exactly once.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
import traceback
from collections.abc import Callable

import msgspec
import trio

from fastfaas.errors import FastfaasError, SaidOnce, TooManyRequestsError
from fastfaas.runtime.results import InvocationResult
from fastfaas.runtime.runtime import Runtime
from fastfaas.runtime.store import EventQueue, QueuedEvent

THROTTLE_BACKOFF_S = 0.5  # an event over a concurrency limit waits this long, then again
STORE_BACKOFF_S = 1.0  # after the queue's database refused to be read


class Poller:
    """Runs queued events, at most `concurrency` at once.

    Args:
        queue: where accepted events wait.
        runtime: runs them.
        on_result: called with (function, result, seconds) for each finished event.
    """

    def __init__(self, queue: EventQueue, runtime: Runtime, *, concurrency: int = 32,
                 on_result: Callable[[str, InvocationResult, float], None] | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.queue = queue
        self.runtime = runtime
        self.concurrency = concurrency
        self.on_result = on_result
        self.running = 0
        self.completed = 0
        self.throttled = 0
        self._say = SaidOnce("retrying")  # the queue's database refused a read or write
        self._wakeup = trio.Event()
        self._stopping = False
        self._idle = trio.Event()
        self._idle.set()

    def wake(self) -> None:
        """An event was queued."""
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll until cancelled; events in hand then go back to the queue."""
        requeued = self.queue.requeue_running()
        if requeued:
            print(f"fastfaas: {requeued} asynchronous invocation(s) of a previous run will"
                  " run again", file=sys.stderr)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while not self._stopping:
                self._wakeup = trio.Event()
                free = self.concurrency - self.running
                try:
                    events = self.queue.take(free) if free > 0 else []
                except sqlite3.Error as exc:  # a full disk, a lock held too long...
                    self._say("cannot take queued events", exc)
                    await trio.sleep(STORE_BACKOFF_S)
                    continue
                for event in events:
                    self.running += 1
                    self._idle = trio.Event()
                    nursery.start_soon(self._run_one, event)
                # Woken by a new event, or by a finished one freeing a place.
                await self._wakeup.wait()

    @property
    def store_errors(self) -> int:
        """Reads and writes the queue's database refused."""
        return self._say.count

    def stop_taking(self) -> None:
        """Take no more events (a graceful stop); those running finish."""
        self._stopping = True
        self._wakeup.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _run_one(self, event: QueuedEvent) -> None:
        t0 = time.perf_counter()
        done = False
        try:
            try:
                result = await self.runtime.invoke(event.function, payload=event.payload,
                                                   version=event.version,
                                                   request_id=event.id)
            except TooManyRequestsError:
                # Over a concurrency limit: the event waits and is taken again later.
                await trio.sleep(THROTTLE_BACKOFF_S)
                self.throttled += 1
                self.queue.requeue(event.id)
            except FastfaasError as exc:
                error = msgspec.json.encode({"error": exc.code, "message": str(exc)})
                self.queue.finish(event.id, False, b"", error.decode(), "")
            except Exception as exc:  # a bug of ours: record it, keep polling
                traceback.print_exc()
                error = msgspec.json.encode({"error": "InternalError", "message": repr(exc)})
                self.queue.finish(event.id, False, b"", error.decode(), "")
            else:
                err = None
                if result.error is not None:
                    err = _error_text(result)
                self.queue.finish(event.id, result.error is None, result.payload, err,
                                  result.start)
                if self.on_result is not None:
                    self.on_result(event.function, result, time.perf_counter() - t0)
            done = True
            self.completed += 1
        except sqlite3.Error as exc:
            # Its outcome could not be written: it stays `running`, and runs again at
            # the next start (at least once).
            self._say("cannot record an asynchronous invocation's outcome", exc)
            done = True
        finally:
            if not done:  # cancelled by a stop: it runs again at the next start
                with contextlib.suppress(sqlite3.Error):
                    self.queue.requeue(event.id)
            self.running -= 1
            if self.running == 0:
                self._idle.set()
            self._wakeup.set()


def _error_text(result: InvocationResult) -> str:
    """The error body kept for GET /v1/invocations/{id}: the function's own
    {errorType, errorMessage, ...} with its kind; whatever else its instance sent
    (not an object, not JSON) gives way to the error's own fields."""
    assert result.error is not None
    try:
        body = msgspec.json.decode(result.payload)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"errorType": result.error.error_type,
                "errorMessage": result.error.error_message}
    body["kind"] = result.error.kind
    return msgspec.json.encode(body).decode()
