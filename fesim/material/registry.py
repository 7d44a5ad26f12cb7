"""The material package's registries: :class:`fesim.registry.Registry` raising
:class:`~fesim.errors.MaterialError`."""

from __future__ import annotations

from fesim.errors import MaterialError
from fesim.registry import Registry as _Registry


class Registry(_Registry):
    """A registry of material relations (laws, ash equations); errors are MaterialError."""

    error = MaterialError
