"""The check broker: one session check per key across all the workers of one instance.

Each worker keeps its own cache of userinfo answers (the first level: a hit costs no I/O). On a miss it
asks the broker, a small server the supervisor runs on a Unix socket in a directory only its user can
enter. The broker answers with one of:
- an answer another worker got less than the asker's TTL ago (with its age, so the TTL still runs from
  the CentralAuth call, not from the copy);
- "go": no one has the answer, this worker makes the call and reports it (`put`, or `reject`, or
  `fail` for an outage), and meanwhile every other worker asking for the key waits for that report;
- "dead": the token ended (a sign-out, or CentralAuth said so) and no call is needed.

So 30 concurrent requests for a fresh key spread over all workers make one userinfo call, and the
answer fills the cache of every worker that asked. Sign-outs and tokens CentralAuth refused are also
told to every other worker at once, which then refuses the token and closes its websockets.

The broker never sees a token: keys are the token's SHA-256, the client IP and the user agent's digest.
It holds what the workers already hold, in one more process of the same user.

Failures degrade to a per-worker check, never to an error: a worker that cannot reach the broker, or
whose question is not answered within the CentralAuth timeout, makes the call itself; a holder that dies
or stalls loses its lease after the same timeout and the waiters make their own calls. Everything is
bounded: answers and dead tokens (`max_entries` each, dropped past their time), message size
(`MAX_MESSAGE`), what may wait to be sent to a peer that stops reading (`MAX_BACKLOG`), and every
wait.

The wire format is one JSON object per line; see `BrokerServer._handle` for the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from authproxy.core.user import User
from authproxy.errors import SessionRejected
from authproxy.provider.checker import SESSION_ENDED, Key, SessionKnownDead

log = structlog.get_logger("authproxy.broker")

# The environment variable through which a supervisor tells its workers where the broker listens.
BROKER_ENV = "AUTHPROXY_CHECK_BROKER"
MAX_MESSAGE = 64 * 1024
MAX_BACKLOG = 1 << 20  # bytes waiting to be sent to one peer
# A worker that could not reach the broker tries again after this long; meanwhile it checks alone.
RECONNECT_PAUSE = 1.0


def _wire_key(key: Key) -> list[str]:
    return [key[0].hex(), key[1], key[2].hex()]


def _parse_key(value: Any) -> tuple[str, str, str] | None:
    if isinstance(value, list) and len(value) == 3 and all(isinstance(part, str) for part in value):
        return value[0], value[1], value[2]
    return None


# -- the broker (in the supervisor) ----------------------------------------------------------------


@dataclass
class _Answer:
    user: dict[str, Any]
    fetched_at: float  # monotonic time of the CentralAuth call
    keep: float  # seconds from fetched_at during which some route may still use it


@dataclass
class _Lease:
    holder: _Peer
    timer: asyncio.TimerHandle
    waiters: list[tuple[_Peer, int]] = field(default_factory=list)


@dataclass(eq=False)
class _Peer:
    writer: asyncio.StreamWriter

    def send(self, message: dict[str, Any]) -> None:
        if self.writer.is_closing():
            return
        # Replies and broadcasts to a peer are not waited on (one slow worker must not hold up the
        # others); a peer that stops reading is dropped once this much waits for it.
        if self.writer.transport.get_write_buffer_size() > MAX_BACKLOG:
            self.writer.close()
            return
        self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")


class BrokerServer:
    """The broker's state and protocol; `serve` runs it on a Unix socket until cancelled."""

    def __init__(
        self, *, max_entries: int, lease: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_entries
        self._lease_time = lease
        self._clock = clock
        self._answers: OrderedDict[tuple[str, str, str], _Answer] = OrderedDict()
        self._by_token: dict[str, set[tuple[str, str, str]]] = {}
        self._dead: OrderedDict[str, float] = OrderedDict()
        self._leases: dict[tuple[str, str, str], _Lease] = {}
        self._peers: set[_Peer] = set()

    async def serve(self, path: str, ready: Callable[[], None] = lambda: None) -> None:
        server = await asyncio.start_unix_server(self._connected, path, limit=MAX_MESSAGE)
        # No chmod needed: the socket lies in a directory only this user may enter (`tempfile.mkdtemp`).
        ready()
        try:
            async with server:
                await asyncio.Future()  # until cancelled
        finally:
            for peer in list(self._peers):
                peer.writer.close()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _Peer(writer)
        self._peers.add(peer)
        try:
            while line := await reader.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    break
                if not isinstance(message, dict) or not self._handle(peer, message):
                    break
                await writer.drain()
        except (OSError, ValueError, asyncio.LimitOverrunError):
            pass  # a peer that sends garbage or too much is dropped; its leases go to the waiters
        finally:
            self._peers.discard(peer)
            self._gone(peer)
            writer.close()

    def _handle(self, peer: _Peer, message: dict[str, Any]) -> bool:
        """Act on one message; False for one that makes no sense (the peer is then dropped).

        From a worker:
        - `{"op": "ask", "id": N, "key": K, "fresh": seconds}`: an answer younger than `fresh`, please;
        - `{"op": "put", "key": K, "user": U, "age": seconds, "keep": seconds}`: the holder's answer;
        - `{"op": "reject", "key": K, "code": C}`: CentralAuth refused it with error code C;
        - `{"op": "fail", "key": K}`: the holder got no answer (an outage);
        - `{"op": "dead", "digest": D, "lifetime": seconds}`: the token ended (sign-out, refusal).
        To a worker: `{"id": N, "user": U, "age": s}`, `{"id": N, "go": 1}`, `{"id": N, "dead": s}`,
        `{"id": N, "rejected": C}`, and unasked `{"op": "dead", "digest": D}`.
        """
        op = message.get("op")
        if op == "dead":
            digest, lifetime = message.get("digest"), message.get("lifetime")
            if not isinstance(digest, str) or not isinstance(lifetime, int | float):
                return False
            self._mark_dead(digest, float(lifetime))
            for other in self._peers:
                if other is not peer:
                    other.send({"op": "dead", "digest": digest})
            return True
        key = _parse_key(message.get("key"))
        if key is None:
            return False
        if op == "ask":
            number, fresh = message.get("id"), message.get("fresh")
            if not isinstance(number, int) or not isinstance(fresh, int | float):
                return False
            self._ask(peer, number, key, float(fresh))
        elif op == "put":
            user, age, keep = message.get("user"), message.get("age"), message.get("keep")
            if (
                not isinstance(user, dict)
                or User.from_dict(user) is None
                or not isinstance(age, int | float)
                or not isinstance(keep, int | float)
            ):
                return False
            self._put(peer, key, user, float(age), float(keep))
        elif op == "reject":
            code = message.get("code")
            if not isinstance(code, str):
                return False
            reply = {"dead": None} if code in SESSION_ENDED else {"rejected": code}
            self._settle(peer, key, reply)
        elif op == "fail":
            self._settle(peer, key, {"go": 1})
        else:
            return False
        return True

    def _ask(self, peer: _Peer, number: int, key: tuple[str, str, str], fresh: float) -> None:
        now = self._clock()
        until = self._dead.get(key[0])
        if until is not None:
            if now < until:
                peer.send({"id": number, "dead": until - now})
                return
            del self._dead[key[0]]
        answer = self._answers.get(key)
        if answer is not None and now - answer.fetched_at < fresh:
            self._answers.move_to_end(key)
            peer.send({"id": number, "user": answer.user, "age": now - answer.fetched_at})
            return
        lease = self._leases.get(key)
        if lease is not None and lease.holder is not peer:
            lease.waiters.append((peer, number))
            return
        if lease is not None:  # the holder asks again (another request of its own): it calls again
            lease.timer.cancel()
            waiters = lease.waiters
        else:
            waiters = []
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._lease_time, self._expire, key)
        self._leases[key] = _Lease(peer, timer, waiters)
        peer.send({"id": number, "go": 1})

    def _put(
        self, peer: _Peer, key: tuple[str, str, str], user: dict[str, Any], age: float, keep: float
    ) -> None:
        lease = self._leases.get(key)
        if lease is None or lease.holder is not peer:
            return  # only from the worker sent to CentralAuth for the key, and only while it holds it
        now = self._clock()
        if key[0] not in self._dead:
            self._answers[key] = _Answer(user, now - age, keep)
            self._answers.move_to_end(key)
            self._by_token.setdefault(key[0], set()).add(key)
            self._trim(now)
        self._settle(peer, key, {"user": user, "age": age})

    def _settle(self, peer: _Peer, key: tuple[str, str, str], reply: dict[str, Any]) -> None:
        """The holder's report: every waiter gets `reply` (a "go" to make its own call after an outage)."""
        lease = self._leases.get(key)
        if lease is None or lease.holder is not peer:
            return
        del self._leases[key]
        lease.timer.cancel()
        for waiter, number in lease.waiters:
            waiter.send({"id": number, **reply})

    def _expire(self, key: tuple[str, str, str]) -> None:
        """A holder that has not reported within the lease: every waiter makes its own call."""
        lease = self._leases.pop(key, None)
        if lease is not None:
            for waiter, number in lease.waiters:
                waiter.send({"id": number, "go": 1})

    def _gone(self, peer: _Peer) -> None:
        for key, lease in list(self._leases.items()):
            lease.waiters = [(waiter, number) for waiter, number in lease.waiters if waiter is not peer]
            if lease.holder is peer:
                self._expire(key)
                lease.timer.cancel()

    def _mark_dead(self, digest: str, lifetime: float) -> None:
        now = self._clock()
        self._dead[digest] = now + max(0.0, lifetime)
        self._dead.move_to_end(digest)
        while self._dead:
            oldest, until = next(iter(self._dead.items()))
            if len(self._dead) <= self._max and until > now:
                break
            del self._dead[oldest]
        for key in self._by_token.pop(digest, ()):
            self._answers.pop(key, None)

    def _trim(self, now: float) -> None:
        while self._answers:
            key, oldest = next(iter(self._answers.items()))
            if len(self._answers) <= self._max and now - oldest.fetched_at < oldest.keep:
                break
            del self._answers[key]
            keys = self._by_token.get(key[0])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_token[key[0]]


class BrokerThread:
    """The broker on an event loop of its own, in a thread of the supervisor (which itself runs no
    event loop: its main loop waits on worker processes)."""

    def __init__(self, path: str, server: BrokerServer) -> None:
        self.path = path
        self._server = server
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="authproxy-check-broker", daemon=True)
        self._task: asyncio.Task[None] | None = None

    def start(self, timeout: float = 5.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the check broker did not start")

    def stop(self, timeout: float = 5.0) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._server.serve(self.path, self._ready.set))
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        self._loop.close()


# -- the worker's side -----------------------------------------------------------------------------


class BrokerClient:
    """A worker's line to the broker: `SharedChecks` for the session checker, and the broadcast of
    dead tokens (`SharedDeadTokens`; `dead_for` is the broker's own business on `ask`, so it asks
    nothing here). Tokens found dead by other workers are passed to `on_dead` (their SHA-256)."""

    def __init__(self, path: str, *, wait: float, keep: float, on_dead: Callable[[bytes], None]) -> None:
        self._path = path
        self._wait = wait
        self._keep = keep
        self._on_dead = on_dead
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[bool] | None = None
        self._last_failure = -RECONNECT_PAUSE
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0

    def keep_for(self, seconds: float) -> None:
        self._keep = seconds

    async def answer(
        self, key: Key, token: str, fresh_for: float, call: Callable[[], Awaitable[tuple[User, float]]]
    ) -> tuple[User, float]:
        wire = _wire_key(key)
        reply = await self._ask(wire, fresh_for)
        if reply is None or "go" in reply:
            return await self._hold(wire, call)
        if "user" in reply:
            user, age = User.from_dict(reply["user"]), reply.get("age")
            if user is not None and isinstance(age, int | float):
                return user, float(age)
            return await call()
        if "dead" in reply:
            lifetime = reply["dead"]
            raise SessionKnownDead(float(lifetime) if isinstance(lifetime, int | float) else None)
        if isinstance(reply.get("rejected"), str):
            raise SessionRejected(reply["rejected"])
        return await call()

    async def dead_for(self, digest: bytes) -> float | None:
        return None

    async def reachable(self) -> bool:
        """Whether this worker is connected to the broker (connecting now if it was not)."""
        return await self._connected()

    async def record_dead(self, digest: bytes, lifetime: float) -> None:
        await self._send({"op": "dead", "digest": digest.hex(), "lifetime": lifetime})

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
        self._writer = None

    async def _hold(
        self, wire: list[str], call: Callable[[], Awaitable[tuple[User, float]]]
    ) -> tuple[User, float]:
        """Make the call as the key's holder, and tell the broker how it ended."""
        try:
            user, age = await call()
        except SessionRejected as exc:
            await self._send({"op": "reject", "key": wire, "code": exc.error_code})
            raise
        except BaseException:
            await self._send({"op": "fail", "key": wire})
            raise
        await self._send({"op": "put", "key": wire, "user": user.to_dict(), "age": age, "keep": self._keep})
        return user, age

    async def _ask(self, wire: list[str], fresh_for: float) -> dict[str, Any] | None:
        """The broker's reply, or None when it cannot be had in time (then this worker checks alone)."""
        if not await self._connected():
            return None
        self._next_id += 1
        number = self._next_id
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[number] = reply
        try:
            if not await self._send({"op": "ask", "id": number, "key": wire, "fresh": fresh_for}):
                return None
            # A waiter's reply comes when the holder's call ends, which the broker bounds by the same
            # timeout; a little more here covers the broker's own delay.
            return await asyncio.wait_for(asyncio.shield(reply), self._wait + 1.0)
        except (TimeoutError, ConnectionError):
            return None
        finally:
            self._pending.pop(number, None)

    async def _send(self, message: dict[str, Any]) -> bool:
        writer = self._writer
        if writer is None or writer.is_closing():
            return False
        try:
            writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), self._wait)
        except (OSError, TimeoutError) as exc:
            self._lost(exc)
            return False
        return True

    async def _connected(self) -> bool:
        if self._writer is not None and not self._writer.is_closing():
            return True
        loop = asyncio.get_running_loop()
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        if loop.time() - self._last_failure < RECONNECT_PAUSE:
            return False
        self._connecting = loop.create_future()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self._path, limit=MAX_MESSAGE), self._wait
            )
        except (OSError, TimeoutError) as exc:
            self._last_failure = loop.time()
            log.warning("broker.unreachable", error=type(exc).__name__, fallback="per-worker checks")
            self._connecting.set_result(False)
            self._connecting = None
            return False
        self._writer = writer
        self._reader_task = asyncio.ensure_future(self._read(reader))
        self._connecting.set_result(True)
        self._connecting = None
        return True

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if not isinstance(message, dict):
                    continue
                if message.get("op") == "dead":
                    digest = message.get("digest")
                    if isinstance(digest, str):
                        with contextlib.suppress(ValueError):
                            self._on_dead(bytes.fromhex(digest))
                    continue
                future = self._pending.get(message.get("id", -1))
                if future is not None and not future.done():
                    future.set_result(message)
            self._lost(ConnectionResetError("the broker closed the connection"))
        except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
            self._lost(exc)

    def _lost(self, error: BaseException) -> None:
        """The line is down: every question waiting on it is answered "check alone"."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._last_failure = asyncio.get_running_loop().time()
            log.warning("broker.connection_lost", error=type(error).__name__, fallback="per-worker checks")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionResetError())
        self._pending.clear()
