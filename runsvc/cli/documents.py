"""Run configs written by people: YAML (or JSON, which the same parser reads) decoded into
the API's types, with errors that name the file, line and path.

PyYAML follows YAML 1.1, where `on`, `off`, `yes` and `no` are booleans; a config's
dependency conditions are spelled `on:`. The loader here resolves only `true`/`false` as
booleans (as YAML 1.2 and JSON do), so `on:` stays a key.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from runsvc.domain.suggest import unknown_field_hint

if TYPE_CHECKING:
    import yaml

T = TypeVar("T")


@functools.cache
def _loader() -> type[yaml.SafeLoader]:
    """SafeLoader with YAML 1.2 booleans. PyYAML loads when a file is read: most commands
    read none, and start sooner without it."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )
    return Loader


class DocumentError(ValueError):
    """A config file that cannot be read or does not fit; the message says where."""


class Document:
    """A parsed file and the position of each of its values."""

    def __init__(self, text: str, name: str) -> None:
        import yaml

        self.name = name
        try:
            self.root = yaml.compose(text, Loader=_loader())
            self.data: Any = yaml.load(text, Loader=_loader())  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{name}:{mark.line + 1}" if mark is not None else name
            problem = getattr(exc, "problem", None) or str(exc)
            raise DocumentError(f"{where}: {problem}") from exc

    @classmethod
    def read(cls, path: Path) -> Document:
        try:
            return cls(path.read_text(), str(path))
        except OSError as exc:
            raise DocumentError(f"{path}: {exc.strerror}") from exc

    def line_of(self, path: str) -> int | None:
        """The 1-based line of the value at `path` (`config.tasks[3].depends[0]`), or of
        the nearest enclosing value that exists."""
        import yaml

        node = self.root
        if node is None:
            return None
        line: int = node.start_mark.line + 1
        for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
            child = None
            if key and isinstance(node, yaml.MappingNode):
                child = next((v for k, v in node.value if k.value == key), None)
            elif index and isinstance(node, yaml.SequenceNode):
                position = int(index)
                child = node.value[position] if position < len(node.value) else None
            if child is None:
                break
            node = child
            line = node.start_mark.line + 1
        return line

    def where(self, path: str) -> str:
        line = self.line_of(path)
        return f"{self.name}:{line}" if line is not None else self.name

    def decode(self, type_: type[T]) -> T:
        """The document as `type_`; a DocumentError naming file, line and path if not."""
        try:
            return msgspec.convert(self.data, type_)
        except msgspec.ValidationError as exc:
            text = str(exc)
            match = re.search(r" - at `\$(.*)`$", text)
            path = match.group(1).lstrip(".") if match else ""
            message = text[: match.start()] if match else text
            message += unknown_field_hint(message, type_, match.group(1) if match else "")
            raise DocumentError(f"{self.where(path)}: {path or 'document'}: {message}") from exc
