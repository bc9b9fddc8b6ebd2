"""The server's settings, checked once: limits, bearer keys, and the rule that a server reachable
beyond this machine needs a key."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LatentGuardError

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether ``host`` can only be reached from this machine (127.0.0.0/8, ::1, localhost).

    Any other name is treated as reachable from outside: a name can resolve to anything.
    """
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_keys(path: str | Path, flag: str) -> frozenset[str]:
    """Bearer tokens from a file, one per line (blank lines and ``#`` comments skipped; several
    lines let keys be rotated); an empty or unreadable file is refused."""
    from ..io import read_text

    keys = {line.strip() for line in read_text(path, f"{flag} file").splitlines()}
    keys = {k for k in keys if k and not k.startswith("#")}
    if not keys:
        raise LatentGuardError(f"{flag} {path}: no key found (put one bearer token per line)")
    bad = [k for k in keys if any(c.isspace() for c in k) or not k.isprintable()]
    if bad:
        raise LatentGuardError(f"{flag} {path}: a key contains spaces or control characters; one token per line")
    return frozenset(keys)


@dataclass(frozen=True)
class ServeSettings:
    """What ``latentguard serve`` runs with (config section ``serve``; see latentguard/default.yaml)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_inputs: int = 256
    max_chars: int = 10000
    max_sentences: int = 32
    queue_size: int = 4096
    max_in_flight: int = 128
    body_timeout_s: float = 30.0
    api_keys: frozenset[str] = field(default_factory=frozenset)
    admin_keys: frozenset[str] = field(default_factory=frozenset)
    insecure: bool = False
    audit_log: str | None = None
    audit_prompts: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_inputs", "max_chars", "max_sentences", "queue_size", "max_in_flight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise LatentGuardError(f"serve.{name} must be a positive integer, got {value!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise LatentGuardError(f"serve.port must be an integer in 0..65535, got {self.port!r}")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 10_000:
            raise LatentGuardError(f"serve.max_wait_ms must be a number of milliseconds in [0, 10000], "
                                   f"got {self.max_wait_ms!r}")
        if not isinstance(self.body_timeout_s, (int, float)) or not 0 < self.body_timeout_s <= 3600:
            raise LatentGuardError(f"serve.body_timeout_s must be a number of seconds in (0, 3600], "
                                   f"got {self.body_timeout_s!r}")
        if self.queue_size < self.max_inputs:
            raise LatentGuardError(f"serve.queue_size ({self.queue_size}) must be at least serve.max_inputs "
                                   f"({self.max_inputs}), or a full-size request could never be queued")
        if not is_loopback(self.host) and not self.api_keys and not self.insecure:
            raise LatentGuardError(f"refusing to serve on {self.host}, which other machines can reach, without an "
                                   "API key: give --api-key-file FILE (or --insecure to serve without one)")

    @classmethod
    def from_config(cls, serve) -> "ServeSettings":
        """From a loaded config's ``serve`` section, the key files read now."""
        api = read_keys(serve.api_key_file, "--api-key-file") if serve.api_key_file else frozenset()
        admin = read_keys(serve.admin_key_file, "--admin-key-file") if serve.admin_key_file else frozenset()
        return cls(host=serve.host, port=serve.port, max_batch_size=serve.max_batch_size,
                   max_wait_ms=float(serve.max_wait_ms), max_inputs=serve.max_inputs, max_chars=serve.max_chars,
                   max_sentences=serve.max_sentences, queue_size=serve.queue_size,
                   max_in_flight=serve.max_in_flight, body_timeout_s=float(serve.body_timeout_s),
                   api_keys=api, admin_keys=admin, insecure=serve.insecure,
                   audit_log=serve.audit_log, audit_prompts=serve.audit_prompts)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body worth parsing: every input at its longest, JSON-escaped (12 bytes a character:
        one outside the BMP is two ``\\uXXXX`` escapes)."""
        return self.max_inputs * (self.max_chars * 12 + 64) + 65536
