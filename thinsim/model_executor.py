"""The scenario executor on the model, by its old name (``thinsim scenario`` imports it)."""

from __future__ import annotations

from collections.abc import Callable

from .executor import ScenarioExecutor
from .model.store import DataStore, MemoryStore

__all__ = ["ModelExecutor"]


def ModelExecutor(store_factory: Callable[[], DataStore] = MemoryStore) -> ScenarioExecutor:
    """:class:`ScenarioExecutor` on a fresh model machine: see ``ScenarioExecutor.on_model``."""
    return ScenarioExecutor.on_model(store_factory)
