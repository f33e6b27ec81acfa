"""The replica's decode loop: continuous batching of prepared requests (``engine.Job``) over one mixed model.

    scheduler = Scheduler(engine, options)                  # starts the loop thread
    ticket = scheduler.submit(job, sink)                    # sink(Delta | APIError), called from the loop
    scheduler.cancel(ticket)                                # the client left: its rows go at the next step

One thread owns the model. Between two decode steps it drops cancelled requests, admits waiting ones and
steps the running batch (``decoding.RunningBatch``): a request is a group of forward rows (its ``RowPlan``:
soup, MAGE, MOD, value, MOC/RiC, HoE rows) that joins and leaves as a unit. Admission is FIFO and never skips
the head of the queue (a long prompt is not starved by short ones behind it), within three budgets:

    max_batch_rows     forward rows in the running batch (compute per step)
    max_batch_tokens   KV positions reserved, Σ over forward rows of (prompt + max_tokens) (memory)
    max_prefill_tokens prompt tokens prefilled between two decode steps (how long one step may stall)

A request larger than a budget is admitted alone once the batch is empty, so every valid request runs.
``batching = "static"`` admits only into an empty batch (a batch runs until its longest request ends: the
behaviour before continuous batching, kept for ``bench/serve_load.py``). Back-pressure sits in front of the
replica: Ray Serve's ``max_ongoing_requests`` / ``max_queued_requests`` (``builder``), answered 503 by the
ingress. A failed step answers every request in the batch with a 500 and the loop carries on with a fresh
batch (the replica survives).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from soupkitchen.decoding import RunningBatch
from soupkitchen.serving.engine import Delta, Job, SoupEngine, TextStream
from soupkitchen.serving.options import ServeOptions
from soupkitchen.serving.protocol import APIError

log = logging.getLogger("ray.serve")


@dataclass(eq=False)
class Ticket:
    """One request in the scheduler: its job, where its deltas go, its generated tokens so far."""

    job: Job
    sink: Callable[[Delta | APIError], None]
    stream: TextStream = field(init=False)
    tokens: list[int] = field(default_factory=list)
    rows_seen: int = 0  # Σ over its decode steps of the batch's requests (its mean batch size)
    cancelled: bool = False

    def __post_init__(self):
        self.stream = TextStream(self.job.request.stop)

    @property
    def width(self) -> int:
        return self.job.plan.width

    @property
    def reserved_tokens(self) -> int:
        return self.width * (self.job.prompt_tokens + self.job.request.max_tokens)


class Scheduler:
    """Continuous batching for one replica (module docstring); ``stats`` is what it is doing now."""

    def __init__(self, engine: SoupEngine, options: ServeOptions):
        self.engine, self.options = engine, options
        self.waiting: deque[Ticket] = deque()
        self.running: dict[Ticket, None] = {}  # in row order of the batch
        self.cond = threading.Condition()
        self.batch = self._new_batch()
        self.steps = self.admitted = self.failed_steps = 0
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="decode", daemon=True)
        self.thread.start()

    def _new_batch(self) -> RunningBatch:
        e = self.engine
        return RunningBatch(e.model, e.tokenizer, max_prompt_tokens=e.info.context_length, device=e.device)

    def submit(self, job: Job, sink: Callable[[Delta | APIError], None]) -> Ticket:
        ticket = Ticket(job, sink)
        with self.cond:
            self.waiting.append(ticket)
            self.cond.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop a request (a no-op once it has finished): waiting, at once; running, before the next step."""
        with self.cond:
            ticket.cancelled = True
            if ticket in self.waiting:
                self.waiting.remove(ticket)
            self.cond.notify()

    def stats(self) -> dict:
        with self.cond:
            return {
                "running": len(self.running),
                "forward_rows": sum(t.width for t in self.running),
                "waiting": len(self.waiting),
                "steps": self.steps,
                "admitted": self.admitted,
                "failed_steps": self.failed_steps,
                "kv_length": self.batch.batch.length if self.batch.batch is not None else 0,
            }

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(timeout=10)

    # -- the loop (the decode thread only) --------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not (self.closed or self.waiting or self.running):
                    self.cond.wait()
                if self.closed:
                    return
            try:
                self._drop_cancelled()
                self._gather()
                self._admit()
                if self.running:
                    self._step()
            except Exception:  # noqa: BLE001 - one bad batch must not take the replica down
                log.exception("decoding step failed; answering its requests with 500")
                self._fail_all()

    def _drop_cancelled(self) -> None:
        gone = [t for t in self.running if t.cancelled]
        if gone:
            self.batch.drop(gone)
            with self.cond:
                for t in gone:
                    self.running.pop(t, None)

    def _gather(self) -> None:
        """An idle batch waits up to ``batch_wait_timeout_s`` for arrivals, so a burst prefills together."""
        wait = self.options.batch_wait_timeout_s
        if self.running or not wait:
            return
        deadline = time.monotonic() + wait
        with self.cond:
            while not self.closed and (left := deadline - time.monotonic()) > 0:
                if sum(t.width for t in self.waiting) >= self.options.max_batch_rows:
                    break
                self.cond.wait(left)

    def _admit(self) -> None:
        """FIFO admission within the budgets (module docstring)."""
        o = self.options
        if o.batching == "static" and self.running:
            return
        rows = sum(t.width for t in self.running)
        reserved = sum(t.reserved_tokens for t in self.running)
        prefill, chosen = 0, []
        with self.cond:
            while self.waiting:
                t = self.waiting[0]
                fits = (
                    rows + t.width <= o.max_batch_rows
                    and reserved + t.reserved_tokens <= o.max_batch_tokens
                    and prefill + t.width * t.job.prompt_tokens <= o.max_prefill_tokens
                )
                if not fits and (self.running or chosen):
                    break
                chosen.append(self.waiting.popleft())
                rows, reserved = rows + t.width, reserved + t.reserved_tokens
                prefill += t.width * t.job.prompt_tokens
        if not chosen:
            return
        try:
            self.batch.admit(
                chosen,
                [t.job.text for t in chosen],
                [t.job.plan for t in chosen],
                [t.job.settings for t in chosen],
            )
        except Exception:
            for t in chosen:
                self._send(
                    t,
                    APIError(
                        500, "internal error while prefilling; see the server log", None, "server_error"
                    ),
                )
            raise
        with self.cond:
            for t in chosen:
                self.running[t] = None
            self.admitted += len(chosen)

    def _step(self) -> None:
        tokens, ended = self.batch.step()
        self.steps += 1
        finished = {f.key: f for f in ended}
        size, tok = len(tokens), self.engine.tokenizer
        for t, token in tokens.items():
            t.tokens.append(token)
            t.rows_seen += size
            end = finished.get(t)
            text = t.stream.update(tok.decode(t.tokens, skip_special_tokens=True), final=end is not None)
            finish = None
            if end is not None:
                finish = "stop" if end.eos or len(t.tokens) < t.job.request.max_tokens else "length"
            n = len(t.tokens)
            self._send(t, Delta(text, finish, t.job.prompt_tokens, n, round(t.rows_seen / n, 2)))
        if finished:
            with self.cond:
                for t in finished:
                    self.running.pop(t, None)

    def _send(self, ticket: Ticket, item: Delta | APIError) -> None:
        try:
            ticket.sink(item)
        except Exception:  # noqa: BLE001 - the caller's event loop is gone: nobody is listening
            ticket.cancelled = True

    def _fail_all(self) -> None:
        self.failed_steps += 1
        err = APIError(500, "internal error while generating; see the server log", None, "server_error")
        with self.cond:
            running, self.running = list(self.running), {}
        for t in running:
            self._send(t, err)
        self.batch = self._new_batch()
