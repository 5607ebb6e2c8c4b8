"""One ``Registry`` for every extension point (defences, attackers, datasets, models): a name maps
to one object; a second object under a taken name is an error naming both; an unknown name is a
one-line error with the nearest known name and the list."""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, Iterator, List, TypeVar

from ggl.core.errors import ConfigError

T = TypeVar("T")


def _where(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


class Registry(Generic[T]):
    def __init__(self, kind: str, owner: Callable[[T], object] = lambda item: item):
        self.kind = kind              # "defence", "attacker", ...: what an error calls an entry
        self.owner = owner            # the class or function an entry is, for naming it in errors
        self._items: Dict[str, T] = {}

    def add(self, name: str, item: T, same: Callable[[T, T], bool] = lambda a, b: a is b) -> T:
        """Register ``item`` as ``name``; re-adding the same object (a module imported twice) is a no-op."""
        known = self._items.get(name)
        if known is not None and not same(known, item):
            raise ConfigError(f"two {self.kind}s are registered as '{name}': {_where(self.owner(known))} and "
                              f"{_where(self.owner(item))}; "
                              f"rename one of them")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``."""
        return lambda item: self.add(name, item)

    def get(self, name: object, key: str) -> T:
        """The entry ``name``; else a ``ConfigError`` naming config key ``key``, the nearest name and the list."""
        if isinstance(name, str) and name in self._items:
            return self._items[name]
        raise self.unknown(name, key)

    def unknown(self, name: object, key: str) -> ConfigError:
        known = sorted(self._items)
        near = difflib.get_close_matches(str(name), known, n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        return ConfigError(f"config key '{key}' = {name!r} is not a known {self.kind}; {hint}known: {', '.join(known)}")

    def names(self) -> List[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def items(self):
        return self._items.items()

    def snapshot(self) -> Dict[str, T]:
        return dict(self._items)

    def restore(self, snapshot: Dict[str, T]) -> None:
        """Back to a ``snapshot()`` (tests that register throwaway entries)."""
        self._items = dict(snapshot)
