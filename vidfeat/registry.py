"""A tiny name -> factory registry, so a new backbone, decoder or head is one file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from vidfeat.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a key to a factory. ``register`` is a decorator; ``create`` builds by key."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, key: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if key in self._factories:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._factories[key] = factory
            return factory

        return deco

    def get(self, key: str) -> Callable[..., T]:
        try:
            return self._factories[key]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {key!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def create(self, key: str, **kwargs: object) -> T:
        return self.get(key)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, key: object) -> bool:
        return key in self._factories
