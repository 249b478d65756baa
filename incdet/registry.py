"""Name -> factory registries, one per family (as CompressAI's ``registry``)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries with a ``register`` decorator.

    >>> LEARNERS = Registry("learner")
    >>> @LEARNERS.register("toy")
    ... class Toy: ...
    >>> LEARNERS.get("toy") is Toy
    True

    An unknown name raises ``KeyError`` listing the known names.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register a temporary entry); unknown names are ignored."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self):
        return self._entries.items()

    def __repr__(self) -> str:  # pragma: no cover
        return f"Registry({self.kind!r}, {self.names()})"
