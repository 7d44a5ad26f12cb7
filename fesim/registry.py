"""A named registry: one ``add`` call (or decorator) registers an entry; names feed the CLI.

Every extensible choice of fesim (density-modulus laws, ash equations, solvers, strength
accuracies, mesh kinds, load cases, protocols, output formats) is one :class:`Registry` in
the module that owns it. The CLI takes its ``choices`` and ``--help`` text from the
registries and :class:`fesim.pipeline.RunOptions` validates against them, so registering an
entry is all it takes to offer it.
"""

from __future__ import annotations

from fesim.errors import FesimError, InputError


class Registry(dict):
    """``{name: entry}`` of one kind of entry (entries carry a ``name``).

    Parameters
    ----------
    kind : str
        What the entries are (``"density-modulus law"``, ``"solver"``, ...), used in messages.
    error : FesimError subclass
        Raised for an unknown or doubly registered name (default: :attr:`error` of the class).

    An entry describes itself in ``--help`` by its ``describe()`` method if it has one, else
    as ``"name: description"`` from its ``description`` attribute.
    """

    error: type = InputError

    def __init__(self, kind: str, error: type | None = None):
        super().__init__()
        self.kind = kind
        if error is not None:
            if not issubclass(error, FesimError):
                raise TypeError("a registry's error must derive from FesimError")
            self.error = error

    def add(self, entry):
        """Register ``entry`` under ``entry.name``; a name can be registered once only."""
        if entry.name in self:
            raise self.error(f"{self.kind} {entry.name!r} is already registered")
        self[entry.name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Unregister ``name`` (for plug-ins and tests that register temporary entries)."""
        self.pop(name, None)

    def get_or_raise(self, name: str):
        """The entry called ``name``; :attr:`error` naming the choices if none."""
        try:
            return self[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}") from None

    def names(self) -> tuple:
        """Registered names in registration order (the first is the default)."""
        return tuple(self)

    def help(self, sep: str = "; ") -> str:
        """One line per entry, joined by ``sep``, for ``--help`` (``%`` escaped for argparse)."""
        parts = []
        for name, entry in self.items():
            if hasattr(entry, "describe"):
                parts.append(entry.describe())
            else:
                desc = getattr(entry, "description", "")
                parts.append(f"{name}: {desc}" if desc else name)
        return sep.join(parts).replace("%", "%%")
