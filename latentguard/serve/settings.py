"""The server's settings: the config's ``serve`` section (one schema, one set of checks, in
latentguard/config.py) plus the bearer keys read from its key files, and the rule that a server
reachable beyond this machine needs a key."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..config import ServeConfig, validate_section
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
class ServeSettings(ServeConfig):
    """What ``latentguard serve`` runs with: the config's ``serve`` section (its keys, defaults and checks are
    :class:`latentguard.config.ServeConfig`'s, defined there alone) with the key files read into ``api_keys``
    and ``admin_keys``. Built in code, each value passes the rule it would pass in a YAML file."""

    api_keys: frozenset[str] = field(default_factory=frozenset, repr=False)  # secrets: never in a log line
    admin_keys: frozenset[str] = field(default_factory=frozenset, repr=False)

    def __post_init__(self) -> None:
        validate_section(self, "serve.", "server settings")
        super().__post_init__()
        for keys, name in ((self.api_keys, "api_key_file"), (self.admin_keys, "admin_key_file")):
            if getattr(self, name) and not keys:  # a key file named but never read would serve without its keys
                raise LatentGuardError(f"serve.{name} is set but no key was read from it: build the settings with "
                                       "ServeSettings.from_config(cfg.serve)")
        if not is_loopback(self.host) and not self.api_keys and not self.insecure:
            raise LatentGuardError(f"refusing to serve on {self.host}, which other machines can reach, without an "
                                   "API key: give --api-key-file FILE (or --insecure to serve without one)")

    @classmethod
    def from_config(cls, serve: ServeConfig) -> "ServeSettings":
        """From a loaded config's ``serve`` section, the key files read now."""
        api = read_keys(serve.api_key_file, "--api-key-file") if serve.api_key_file else frozenset()
        admin = read_keys(serve.admin_key_file, "--admin-key-file") if serve.admin_key_file else frozenset()
        return cls(**{f.name: getattr(serve, f.name) for f in fields(ServeConfig)}, api_keys=api, admin_keys=admin)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body worth parsing: every input at its longest, JSON-escaped (12 bytes a character:
        one outside the BMP is two ``\\uXXXX`` escapes)."""
        return self.max_inputs * (self.max_chars * 12 + 64) + 65536
