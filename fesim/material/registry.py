"""A named registry: one ``add`` call (or decorator) registers an entry; names feed the CLI."""

from __future__ import annotations

from fesim.errors import MaterialError


class Registry(dict):
    """``{name: entry}`` of one kind of material relation (entries carry a ``name``).

    Parameters
    ----------
    kind : str
        What the entries are (``"density-modulus law"``, ...), used in error messages.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, entry):
        """Register ``entry`` under ``entry.name``; a name can be registered once only."""
        if entry.name in self:
            raise MaterialError(f"{self.kind} {entry.name!r} is already registered")
        self[entry.name] = entry
        return entry

    def get_or_raise(self, name: str):
        """The entry called ``name``; :class:`~fesim.errors.MaterialError` naming the choices if none."""
        try:
            return self[name]
        except (KeyError, TypeError):
            raise MaterialError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}") from None

    def names(self) -> tuple:
        """Registered names in registration order (the first is the default)."""
        return tuple(self)
