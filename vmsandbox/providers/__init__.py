"""Provider registry: dotted paths imported lazily, so a provider's heavy dependency (libvirt,
vagrant) loads only when that provider is used. The core never imports libvirt directly."""
from __future__ import annotations

import importlib

from ..exceptions import ConfigError
from .base import MachineSpec, Provider, ProviderCheck

PROVIDERS = {
    "libvirt": "vmsandbox.providers.libvirt.LibvirtProvider",
    "fake": "vmsandbox.testing.FakeProvider",
}


def provider_class(name: str, path: str = "sandbox.provider") -> type[Provider]:
    """The class registered as ``name``, imported now. ConfigError (naming ``path``) when it is
    not registered or cannot be imported."""
    try:
        dotted = PROVIDERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"{name!r} is not a provider (known: {', '.join(sorted(PROVIDERS))})", path) from None
    module, _, cls = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"provider {name!r} cannot be loaded ({dotted}): {exc}", path) from exc


def load_provider(name: str, config) -> Provider:
    """Instantiate the provider named in ``sandbox.provider``."""
    return provider_class(name)(config)


__all__ = ["MachineSpec", "Provider", "ProviderCheck", "PROVIDERS", "load_provider", "provider_class"]
