"""The command-line layer: one module per command, all built on :mod:`latentguard.cli.common`.

========= ========================= ============ =====================
command   module                    root script  console entry point
========= ========================= ============ =====================
prepare   latentguard.cli.prepare   prepare.py   latentguard-prepare
train     latentguard.cli.train     main.py      latentguard-train
evaluate  latentguard.cli.evaluate  test.py      latentguard-evaluate
infer     latentguard.cli.infer     inference.py latentguard-infer
verify    latentguard.cli.verify    (none)       latentguard-verify
export    latentguard.cli.export    (none)       latentguard-export
benchmark latentguard.cli.benchmark (none)       latentguard-benchmark
serve     latentguard.cli.serve     (none)       latentguard-serve
score     latentguard.cli.score     (none)       latentguard-score
========= ========================= ============ =====================

``latentguard COMMAND [flags]`` (or ``python -m latentguard COMMAND``) runs any of them. The
commands without a root script (``verify``, ``export``, ``benchmark``, ``serve``, ``score``) are
new with this package, so they have no released name to keep.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Sequence

COMMANDS: dict[str, str] = {
    "prepare": "latentguard.cli.prepare",
    "train": "latentguard.cli.train",
    "evaluate": "latentguard.cli.evaluate",
    "infer": "latentguard.cli.infer",
    "verify": "latentguard.cli.verify",
    "export": "latentguard.cli.export",
    "benchmark": "latentguard.cli.benchmark",
    "serve": "latentguard.cli.serve",
    "score": "latentguard.cli.score",
}
SUMMARIES: dict[str, str] = {
    "prepare": "encode CoPro into an on-disk embedding store (prepare.py)",
    "train": "train the Embedding Mapping Layer (main.py)",
    "evaluate": "Table 1 / Table 2 evaluation and baselines (test.py)",
    "infer": "score a file of prompts, SAFE/UNSAFE per line (inference.py)",
    "verify": "check parity with the released model's scores",
    "export": "write a guard as a bundle folder (and push it to the hub)",
    "benchmark": "the guard on attack and benign prompt sets (MMA, I2P, Ring-A-Bell, P4D, COCO, ...)",
    "serve": "moderation server: OpenAI's /v1/moderations, batched, with metrics",
    "score": "score a corpus into resumable, deduplicated shards (one machine or Ray)",
}


def available_commands() -> dict[str, str]:
    """The commands whose module can be found (all of them in a complete install)."""
    out = {}
    for name, module in COMMANDS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out[name] = module
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``latentguard COMMAND [flags]``: run one command's ``main`` with the remaining flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = available_commands()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        usage = f"usage: latentguard {{{','.join(commands)}}} [flags]   (latentguard COMMAND --help for its flags)"
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; {usage}", file=sys.stderr)
            return 2
        print(usage + "\n\ncommands:")
        for name in commands:
            print(f"  {name:<9} {SUMMARIES.get(name, '')}")
        return 0
    return int(importlib.import_module(commands[argv[0]]).main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
