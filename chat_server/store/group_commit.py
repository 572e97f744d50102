"""`GroupCommit`: appends queued while one transaction runs are committed together in the next."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from chat_server.errors import ChatError, NotStored
from chat_server.models import NewMessage, PostResult, SendChain
from chat_server.store.appends import Append, Outcome

#: Messages committed in one transaction at most (group commit under load).
MAX_APPEND_BATCH: Final = 256

#: Commits one batch in one transaction: an outcome per append, in order, or raises.
CommitBatch = Callable[[Sequence[Append]], Awaitable[Sequence[Outcome]]]

_Queued = tuple[NewMessage, SendChain | None, "asyncio.Future[PostResult]"]


def _breaks(chain: SendChain, outcome: Outcome) -> bool:
    if isinstance(outcome, NotStored):
        return True
    return chain.stop_on_refusal and isinstance(outcome, ChatError)


class GroupCommit:
    """Commits what queued up, in order, while the previous commit ran: one transaction and
    one fsync for many SENDs under load, a batch of one when idle.

    It owns which chains are broken: a chain breaks when one of its appends is refused (with
    `stop_on_refusal`) or its transaction fails, and its appends still queued are then
    answered `NotStored` without reaching the database. A broken chain is forgotten once none
    of its appends is queued: a connection stops sending once it has seen a failure.
    """

    def __init__(self, commit: CommitBatch, *, max_batch: int = MAX_APPEND_BATCH) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._queue: list[_Queued] = []
        self._runner: asyncio.Task[None] | None = None
        self._broken: set[int] = set()
        #: Appends still queued, per chain id (only ids with some).
        self._queued: Counter[int] = Counter()
        #: Told the size of each batch of appends committed together (a metrics hook).
        self.observe_batch: Callable[[int], None] = lambda _size: None

    def append(
        self, message: NewMessage, chain: SendChain | None = None
    ) -> asyncio.Future[PostResult]:
        """Queued now for the next group commit; the future is done once that commit is."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[PostResult] = loop.create_future()
        self._queue.append((message, chain, answer))
        if chain is not None:
            self._queued[chain.id] += 1
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        return answer

    async def close(self) -> None:
        """Wait until every queued append is answered."""
        if self._runner is not None and not self._runner.done():
            await self._runner

    async def _run(self) -> None:
        while self._queue:
            taken = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            batch = self._drop_broken(taken)
            if batch:
                await self._commit_one(batch)
            self._forget_idle_chains()

    def _drop_broken(self, taken: list[_Queued]) -> list[_Queued]:
        """Answer the appends of broken chains; the rest go to the database."""
        batch: list[_Queued] = []
        for entry in taken:
            _, chain, answer = entry
            if chain is None:
                batch.append(entry)
                continue
            self._queued[chain.id] -= 1
            if self._queued[chain.id] <= 0:
                del self._queued[chain.id]
            if chain.id not in self._broken:
                batch.append(entry)
            elif not answer.done():
                answer.set_exception(NotStored("an earlier SEND on this connection failed"))
        return batch

    async def _commit_one(self, batch: list[_Queued]) -> None:
        self.observe_batch(len(batch))
        try:
            outcomes = await self._commit([(message, chain) for message, chain, _ in batch])
        except BaseException as exc:
            for _, chain, answer in batch:
                if chain is not None:
                    self._broken.add(chain.id)  # outcome unknown: store nothing after it
                if not answer.done():
                    answer.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, chain, answer), outcome in zip(batch, outcomes, strict=True):
            if chain is not None and _breaks(chain, outcome):
                self._broken.add(chain.id)
            if answer.done():
                continue  # its sender went away; the message is stored all the same
            if isinstance(outcome, PostResult):
                answer.set_result(outcome)
            else:
                answer.set_exception(outcome)

    def _forget_idle_chains(self) -> None:
        self._broken.intersection_update(self._queued)
