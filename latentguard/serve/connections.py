"""Connections that send nothing must not lock clients out.

uvicorn closes a keep-alive connection left idle after a response, but never one that has not yet
sent a request head, and it accepts connections until the process runs out of file descriptors
(``EMFILE``): a few hundred sockets that send nothing then lock every client out, keyed or not.
The HTTP protocol uvicorn runs is therefore wrapped here, at the connection level:

* **head timeout**: a connection that has not sent a complete request head ``header_timeout_s``
  after it opened (or after its last response) is closed, so half-sent heads (slowloris) too;
* **connection cap**: at most ``max_connections`` open at once, below the descriptor limit
  (``RLIMIT_NOFILE``) with room for the process's own files; a connection past the cap closes the
  oldest one that has no request in flight (one that never sent a head first), so a client that
  sends its request gets in however many idle sockets are open. When every connection has a
  request in flight, the new one is closed instead (``--max-in-flight`` bounds those). One client address holds
  at most a quarter of the cap (:data:`ADDRESS_SHARE`), and a connection whose answer has stalled for
  :data:`STALLED_S` (the client does not read) is evicted after the idle ones: clients that pipelined requests
  and never read had held every connection, a stalled answer counting as in flight (a hostile review);
* **write timeout**: an answer the client does not read (its socket's buffers full, the server's
  send buffer past its high-water mark) for ``write_timeout_s`` aborts the connection. A client
  that pipelined 50,000 requests and never read the answers had held its connection, and the
  request being written, for as long as it kept the socket open (a hostile review);
* **head size**: a request head (request line and headers) past :data:`MAX_HEAD_BYTES` is answered 431
  and the connection closed at once. uvicorn runs httptools where it is installed, which keeps no bound on
  a head (h11 has one): a client sending one endless header, or 65,536 small ones per send, had held the
  model-side event loop at 93% CPU (a keyed check took 10 s, not 0.03 s) and grown the server by 2.5 GB in
  8 s until the head timeout closed it (a hostile review). Bytes are counted from the read after the
  one a head began in (httptools' ``on_message_begin``) until the head completes (``on_headers_complete``),
  so a body, whether read or not, never counts; h11, which has no such hooks, keeps its own 16 KB bound;
* **request target**: the target as sent is kept in the request's scope
  (:data:`TARGET`), so the app can see an absolute-form target (``POST http://evil.com/v1/check``),
  whose authority uvicorn otherwise drops;
* **client gone**: when a connection is lost, every request on it is marked disconnected (uvicorn marks only the
  newest, so a stalled answer ahead of pipelined requests was written on the closed transport: a ``RuntimeError``
  and a traceback in the log per connection, 575 KB for 136: a hostile review); whether it has closed is also kept
  in the scope (:data:`GONE`, a callable), so the app drops an answer rather than write it on a closed transport.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable

RESERVED_FDS = 64  # descriptors kept for the process itself (model files, logs, the audit log, the loop)
MAX_HEAD_BYTES = 64 * 1024  # the largest request head read (h11's own cap is 16 KB; a browser's is ~8-16 KB)
HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                  b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
HEAD_TOO_LARGE_BODY = (b'{"error": {"message": "the request head (request line and headers) passed %d bytes", '
                       b'"type": "invalid_request_error", "code": "head_too_large"}}' % MAX_HEAD_BYTES)
ADDRESS_SHARE = 4  # one client address holds at most 1/4 of the connection cap, so a few cannot take it all
STALLED_S = 1.0  # an answer unread this long (send buffer full) gives its connection up when the cap is reached
TARGET = "latentguard.target"  # scope key: the request target as sent (bytes), where the protocol reports it
GONE = "latentguard.gone"  # scope key: a callable, True once the request's connection is closed (httptools only)


def connection_cap(soft_limit: int | None = None) -> int:
    """The most connections to hold open: the descriptor limit less a reserve (a quarter, at least 64)."""
    if soft_limit is None:
        try:
            import resource

            soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if soft_limit == resource.RLIM_INFINITY:
                soft_limit = 65536
        except ImportError:  # no POSIX limits (Windows): a conservative default
            soft_limit = 1024
    return max(8, soft_limit - max(RESERVED_FDS, soft_limit // 4))


def guarded_protocol(base: type, *, header_timeout_s: float, max_connections: int,
                     write_timeout_s: float = 30.0, max_head_bytes: int = MAX_HEAD_BYTES,
                     on_refused: Callable[[str], None] | None = None) -> type:
    """A subclass of uvicorn's HTTP protocol ``base`` (h11 or httptools) with the head timeout, the cap, the
    write timeout, the head size bound, and the request target kept in the scope. ``on_refused(kind)`` is told of
    each answer given here rather than by the app (the 431), so the metrics count it as an error."""
    opened: dict[Any, str] = {}  # this server's connections, oldest first, with the client address of each
    per_address: dict[str, int] = {}  # connections open per client address
    share = max(1, max_connections // ADDRESS_SHARE)

    class Guarded(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer = self._write_timer = self._stalled_at = None
            self._head_bytes = 0
            address = _address(transport)
            if per_address.get(address, 0) >= share and not _evict_one(opened, per_address, address):
                transport.close()  # this address holds its share, every one busy: it waits its turn
                return
            if len(opened) >= max_connections and not _evict_one(opened, per_address):
                transport.close()  # every connection has a request in flight: this one waits its turn
                return
            opened[self] = address
            per_address[address] = per_address.get(address, 0) + 1
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disconnect()  # uvicorn marks only the newest request disconnected, so a stalled answer ahead
            _forget(opened, per_address, self)  # of pipelined ones was written on the closed transport once woken
            self._disarm()
            self._writable()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            super().pause_writing()
            if getattr(self, "_write_timer", None) is None:
                loop = asyncio.get_running_loop()
                self._write_timer = loop.call_later(write_timeout_s, self._write_timeout)
                self._stalled_at = loop.time()

        def resume_writing(self) -> None:
            self._writable()
            super().resume_writing()

        def _writable(self) -> None:
            timer, self._write_timer, self._stalled_at = getattr(self, "_write_timer", None), None, None
            if timer is not None:
                timer.cancel()

        def _write_timeout(self) -> None:
            self._write_timer = None
            self.transport.abort()  # close() would wait for the buffer to drain, which it never does

        def on_message_begin(self) -> None:  # httptools: a request head starts
            self._heads_begun = getattr(self, "_heads_begun", 0) + 1
            self._in_head = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:  # httptools: the head is complete (its body may follow)
            self._in_head = False
            super().on_headers_complete()  # makes the request's cycle and schedules its task (not run yet)
            cycle = getattr(self, "cycle", None)
            if cycle is not None:
                cycles = self._cycles = getattr(self, "_cycles", None) or deque()  # answered in order, so pruned
                cycles.append(cycle)  # from the front: 50,000 pipelined requests cost no more than one each
                while cycles[0].response_complete:
                    cycles.popleft()
                cycle.scope[GONE] = self._left
                if len(cycles) > MAX_PIPELINED:  # requests queued behind an answer the client does not read: each
                    self._disconnect()  # holds its head, and a client sending 60 KB heads had grown the server to
                    self.transport.abort()  # 11 GB; such a client is cut off (its answers were never read)

        def _left(self) -> bool:
            """Whether the connection is closed; if so its requests are marked disconnected, as uvicorn's own
            ``connection_lost`` will (a turn later), so uvicorn neither writes nor complains of an unsent answer."""
            if not self.transport.is_closing():
                return False
            self._disconnect()
            return True

        def _disconnect(self) -> None:
            for cycle in getattr(self, "_cycles", ()):  # the one answering and any pipelined behind it
                if not cycle.response_complete:
                    cycle.disconnected = True

        def data_received(self, data: bytes) -> None:
            begun = getattr(self, "_heads_begun", 0)
            super().data_received(data)
            if not getattr(self, "_in_head", False) or self._heads_begun != begun:
                self._head_bytes = 0  # no head in progress, or one that began in this read (not counted: it may
                return  # have begun at its end, after a body), so a head is cut past max_head_bytes plus one read
            if not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._head_too_large()

        def _head_too_large(self) -> None:
            self._disarm()
            self.transport.write(HEAD_TOO_LARGE % (len(HEAD_TOO_LARGE_BODY), HEAD_TOO_LARGE_BODY))
            self.transport.close()  # what the client sends on is read no more
            if on_refused is not None:
                on_refused("head_too_large")

        def on_url(self, url: bytes) -> None:  # httptools: the target, possibly in pieces
            super().on_url(url)
            scope = getattr(self, "scope", None)
            if scope is not None:
                scope[TARGET] = scope.get(TARGET, b"") + url

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request's head is timed too (uvicorn's keep-alive timer stops at its first byte)

        def _arm(self) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            armed = getattr(self, "cycle", None)
            self._head_timer = asyncio.get_running_loop().call_later(header_timeout_s, self._head_timeout, armed)

        def _disarm(self) -> None:
            timer, self._head_timer = getattr(self, "_head_timer", None), None
            if timer is not None:
                timer.cancel()

        def _head_timeout(self, armed) -> None:
            self._head_timer = None
            if getattr(self, "cycle", None) is armed and _idle(self):  # no new request head since it was armed
                self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def _idle(protocol) -> bool:
    """No request in flight: none has arrived yet, or the last one is answered."""
    cycle = getattr(protocol, "cycle", None)
    return cycle is None or bool(getattr(cycle, "response_complete", False))


# Requests one connection may have waiting behind an unfinished answer (HTTP pipelining): browsers and clients
# pipeline a few at most, and each holds its head (up to 64 KB) in memory until answered.
MAX_PIPELINED = 8


def _address(transport) -> str:
    """The client's address (without its port), ``"?"`` where the transport has none."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


def _forget(opened: dict, per_address: dict, protocol) -> None:
    """Count ``protocol`` no more among the open connections (once: on eviction or when lost)."""
    if protocol in opened:
        address = opened.pop(protocol)
        per_address[address] -= 1
        if not per_address[address]:
            del per_address[address]


def _stalled(protocol, now: float) -> bool:
    """An answer the client has not read for :data:`STALLED_S` (the server's send buffer past its high-water mark)."""
    since = getattr(protocol, "_stalled_at", None)
    return since is not None and now - since >= STALLED_S


def _evict_one(opened: dict, per_address: dict, address: str | None = None) -> bool:
    """Close the oldest connection (of ``address``, where given) without a request in flight, preferring one that
    never sent a head; failing that, the one whose answer has stalled longest. A stalled answer had counted as in
    flight until the write timeout (30 s), so clients that never read held every connection (a hostile review)."""
    mine = [p for p, a in opened.items() if address is None or a == address]
    idle = [p for p in mine if _idle(p)]
    never = [p for p in idle if getattr(p, "cycle", None) is None]
    now = asyncio.get_running_loop().time()
    stalled = sorted((p for p in mine if _stalled(p, now)), key=lambda p: p._stalled_at)
    victim = (never or idle or stalled or [None])[0]
    if victim is None:
        return False
    _forget(opened, per_address, victim)
    if getattr(victim, "_stalled_at", None) is not None:  # close() would wait for a drain that never comes
        victim._disconnect()
        victim.transport.abort()
    else:
        victim.transport.close()
    return True
