"""A small name → builder registry (OpenSphere style): configs name a ``type``, the registry builds it.

Used for backbones, heads, detectors and losses so that adding one is one new module with a decorator, and no
if/elif chain over names exists anywhere.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from facecli.errors import UsageError

T = TypeVar("T")
#: a registered class or factory keeps its own type (its signature, its class methods) through the decorator
B = TypeVar("B", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps names to classes or factory functions of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[B], B]:
        """Decorator: ``@BACKBONES.register("iresnet50")``."""

        def add(builder: B) -> B:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = builder
            return builder

        return add

    def get(self, name: str) -> Callable[..., T]:
        """The builder registered under ``name`` (hyphens and underscores are interchangeable)."""
        key = name.strip().lower()
        for candidate in (key, key.replace("_", "-"), key.replace("-", "_")):
            if candidate in self._entries:
                return self._entries[candidate]
        raise UsageError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")

    def build(self, name: str, **kwargs: Any) -> T:
        """Build the entry ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UsageError:
            return False
        return True
