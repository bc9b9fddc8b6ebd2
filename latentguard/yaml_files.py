"""YAML files read with one meaning: ``safe_load`` rules, no key given twice, no tag in a file of texts, and no
alias that expands past what a file of settings or concepts holds.

A few hundred bytes of nested aliases ("billion laughs") stand for millions of values: a 284-byte blacklist had
made a 39 MB "one-line" error, and a 315-byte one a MemoryError traceback, or a server reload that stalled scoring
for 12 s (a forty-first hostile pass). The expanded size is counted on the composed nodes, each shared node once,
before anything is built from them.
"""
from __future__ import annotations

import functools
from pathlib import Path

from .errors import LatentGuardError
from .io import read_text

# More values than any blacklist or config of ours holds (the CoPro blacklist has 723 concepts), far fewer than a
# message or a flattened list can hold without harm; and deeper nesting than any of them has (a config: 3 levels).
MAX_EXPANDED = 100_000
MAX_DEPTH = 64


def read_yaml(path: str | Path, what: str = "YAML file", *, scalars_as_text: bool = False) -> object:
    """Parse a UTF-8 YAML file with ``safe_load`` rules, refusing a key given twice in one mapping
    (YAML would silently keep the last); a bad byte, bad syntax or a duplicate is a one-line error.

    ``scalars_as_text``: every unquoted scalar stays the text written (``4:20``, ``0x1F``, ``.nan``,
    ``yes`` are strings, not 260, 31, NaN or True), for files whose values are texts (blacklists); one that
    YAML would read as another type is a :class:`YamlTyped` string, so the reader can refuse it where only
    text is meant (``null`` is not meant as the word "null").
    """
    import yaml

    path = Path(path)
    text = read_text(path, what)
    try:
        return yaml.load(text, Loader=unique_key_loader(scalars_as_text))  # noqa: S506 - Safe/BaseLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(exc, "problem", "") or "")
        detail = f": {problem}" if any(k in problem for k in ("given twice", "is not read here", "expand")) else ""
        raise LatentGuardError(f"{path}: not valid YAML{where}{detail}; fix the file") from None
    except RecursionError:  # "[" * 500: a traceback from PyYAML's recursive composer (a forty-third hostile pass)
        raise LatentGuardError(f"{path}: YAML nested too deeply to read; fix the file") from None


class YamlTyped(str):
    """An unquoted YAML scalar read as its text that YAML itself reads as ``yaml_type`` (null, bool, int,
    float, timestamp): the text is kept, and so is the fact that it was not written as text."""

    yaml_type = "str"


# A file of texts holds texts, lists and mappings: an explicit tag ("!!python/object/apply:...", "!!int") had been
# dropped silently and its value loaded as a concept (a thirty-sixth hostile pass).
_PLAIN_TAGS = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")


@functools.lru_cache(maxsize=2)
def unique_key_loader(scalars_as_text: bool = False) -> type:
    """A ``yaml.SafeLoader`` (or, for texts, ``yaml.BaseLoader``) that refuses duplicate keys (built on
    first use: importing io stays light)."""
    import yaml

    class UniqueKeyLoader(yaml.BaseLoader if scalars_as_text else yaml.SafeLoader):
        def compose_document(self):  # noqa: D401 - yaml hook
            node = super().compose_document()
            size, depth = measure(node) if node is not None else (0, 0)
            if size > MAX_EXPANDED:
                raise yaml.composer.ComposerError(
                    None, None, f"its aliases expand to more than {MAX_EXPANDED:,} values", node.start_mark)
            if depth > MAX_DEPTH:  # refused here whatever the interpreter's recursion limit (below it: RecursionError)
                raise RecursionError
            return node

        def construct_mapping(self, node, deep=False):  # noqa: D401 - yaml hook
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        if key in seen:
                            raise yaml.constructor.ConstructorError(
                                None, None, f"key {key!r} given twice (lines {seen[key]} and {line})",
                                key_node.start_mark)
                        seen[key] = line
                    except TypeError:  # an unhashable key: the base class reports it
                        continue
            return super().construct_mapping(node, deep=deep)

        def construct_object(self, node, deep=False):  # noqa: D401 - yaml hook
            if scalars_as_text and node.tag not in _PLAIN_TAGS:  # "!!int 12" had been loaded as the text '12'
                tag = node.tag.replace("tag:yaml.org,2002:", "!!")
                raise yaml.constructor.ConstructorError(None, None, f"the tag {tag} is not read here", node.start_mark)
            return super().construct_object(node, deep=deep)

        def construct_scalar(self, node):  # noqa: D401 - yaml hook
            value = super().construct_scalar(node)
            if scalars_as_text and node.style is None:  # plain (unquoted): what would YAML have read?
                kind = yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False)).rsplit(":", 1)[-1]
                if kind != "str":
                    value = YamlTyped(value)
                    value.yaml_type = kind
            return value

    return UniqueKeyLoader


def measure(root) -> tuple[int, int]:
    """How many nodes ``root`` (a composed YAML node) stands for with every alias expanded, and how deep it nests:
    each shared node measured once (memoised), so this costs the nodes written, not the values they expand to."""
    sizes: dict[int, tuple[int, int]] = {}
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        value = node.value if isinstance(node.value, list) else []
        kids = [k for item in value for k in (item if isinstance(item, tuple) else (item,))]
        if children_done:
            sizes[id(node)] = (1 + sum(sizes[id(k)][0] for k in kids), 1 + max((sizes[id(k)][1] for k in kids),
                                                                               default=0))
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]
