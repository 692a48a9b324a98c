"""Documents written by people: YAML (or JSON, which the same parser reads) decoded into
msgspec types, with errors that name the file, line and path. The CLI reads run files with
it, and the server too when it is sent one (a simulation of a pasted run file).

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

if TYPE_CHECKING:
    import yaml

T = TypeVar("T")


@functools.cache
def _loader() -> type[yaml.SafeLoader]:
    """The safe loader with YAML 1.2 booleans; libyaml's parser when PyYAML was built with
    it (ten times as fast as the pure Python one). PyYAML loads when a file is read: most
    commands read none, and start sooner without it."""
    import yaml

    base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[valid-type,misc]
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
    """A config file that cannot be read or does not fit; the message says where.

    The parts stay apart for a server, which answers with them as a problem's path:
    `where` (`ci.yaml:14`), `path` in the document (empty for a syntax error), `problem`."""

    def __init__(self, where: str, problem: str, path: str = "") -> None:
        super().__init__(f"{where}: {path}: {problem}" if path else f"{where}: {problem}")
        self.where = where
        self.path = path
        self.problem = problem


class Document:
    """A parsed file and the position of each of its values.

    `max_values` bounds how many values the document holds once its aliases are
    expanded: a few lines of anchors can stand for billions of values (the "billion
    laughs"), which whoever reads the data then walks one by one. Files a person reads
    locally need no bound; a server given text does."""

    @staticmethod
    def hint(message: str, root: type[Any], path: str) -> str:
        """What to add to msgspec's `message` about `path` in a document of `root` (a
        "did you mean"); infra knows no runs, so the rooms that do say it."""
        return ""

    def __init__(self, text: str, name: str, *, max_values: int | None = None) -> None:
        import yaml

        self.name = name
        # Composed once: the nodes give the lines, and are then built into the data.
        loader = _loader()(text)
        try:
            self.root = loader.get_single_node()
            if max_values is not None:
                _within(self.root, max_values, name)
            self.data: Any = None if self.root is None else loader.construct_document(self.root)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{name}:{mark.line + 1}" if mark is not None else name
            problem = getattr(exc, "problem", None) or str(exc)
            raise DocumentError(where, problem) from exc
        except RecursionError:
            raise DocumentError(name, "nested too deeply") from None
        except ValueError as exc:  # a value YAML reads as a date that is none (2001-02-30)
            raise DocumentError(name, str(exc)) from exc
        finally:
            loader.dispose()

    @classmethod
    def read(cls, path: Path) -> Document:
        try:
            return cls(path.read_text(), str(path))
        except OSError as exc:
            raise DocumentError(str(path), exc.strerror or str(exc)) from exc

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
            message += self.hint(message, type_, match.group(1) if match else "")
            raise DocumentError(self.where(path), message, path or "document") from exc


def _within(root: yaml.Node | None, limit: int, name: str) -> None:
    """Refuse a document whose values, aliases expanded, number more than `limit`: the
    count stops at the limit, so an expansion that never ends (an alias inside its own
    anchor) ends here too."""
    import yaml

    count = 0
    waiting = [] if root is None else [root]
    while waiting:
        node = waiting.pop()
        count += 1
        if count > limit:
            raise DocumentError(
                name, f"more than {limit} values once its aliases (*name) are expanded"
            )
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                waiting += (key, value)
        elif isinstance(node, yaml.SequenceNode):
            waiting += node.value
