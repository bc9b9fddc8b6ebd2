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


KEY_FILE_BYTES = 1 << 20  # a key file larger than this is refused unread (a few thousand keys fit)


def read_keys(path: str | Path, flag: str) -> frozenset[str]:
    """Bearer tokens from a file, one per line (blank lines and ``#`` comments skipped; several
    lines let keys be rotated); an empty, unreadable or non-regular file is refused, and so is a key a client
    could not send.

    The file must be a regular file of at most :data:`KEY_FILE_BYTES` (see :func:`latentguard.io.read_regular_text`:
    a FIFO had hung startup, and a reload had frozen scoring). A key must be printable ASCII without spaces: HTTP
    clients send a header in UTF-8 or Latin-1 as they like, and the server compares it as Latin-1, so a key such as
    ``clé-secret`` had been accepted at startup and then refused (401) to every client that sent it in UTF-8."""
    from ..io import read_regular_text, split_lines

    keys = set()
    for number, line in enumerate(split_lines(read_regular_text(path, flag, KEY_FILE_BYTES)), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
            raise LatentGuardError(f"{flag} {path}: line {number}: a key must be printable ASCII without spaces "
                                   "(one token per line; clients cannot send other characters reliably)")
        keys.add(key)
    if not keys:
        raise LatentGuardError(f"{flag} {path}: no key found (put one bearer token per line)")
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
    def body_cap(self) -> int:
        """The largest request body to read: ``max_body_bytes`` when set, else the most that prompts this server
        could take need (see :func:`derived_body_cap`)."""
        return self.max_body_bytes or derived_body_cap(self.max_inputs, self.max_chars, self.queue_size)


# What a request can hold and still be queued: a prompt of up to 300 characters costs one unit of --queue-size,
# a longer one a unit per 40 characters (latentguard.serve.server), so each prompt has at most 300 + 40 x its
# units characters, and a request at most 300 x max_inputs + 40 x queue_size (the queue_size of units it may
# cost). JSON-escaped, a character is 12 bytes at worst (one outside the BMP: two \uXXXX escapes); each prompt
# adds its quotes, comma and a "type"/"text" part's keys, and the object its own keys and whitespace.
FREE_CHARS, CHARS_PER_UNIT, ESCAPED_BYTES, PER_PROMPT_BYTES, SLACK_BYTES = 300, 40, 12, 64, 4096


def derived_body_cap(max_inputs: int, max_chars: int, queue_size: int) -> int:
    """The largest body a request the limits allow can need. Derived from the prompt limits alone, the cap
    (30.8 MB at the defaults) let whitespace padding cost that much memory per request (a hostile review);
    derived from what the queue can take too, it is about 3 MB at the defaults."""
    chars = min(max_inputs * max_chars, FREE_CHARS * max_inputs + CHARS_PER_UNIT * queue_size)
    return chars * ESCAPED_BYTES + max_inputs * PER_PROMPT_BYTES + SLACK_BYTES
