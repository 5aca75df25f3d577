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


def load_provider(name: str, config) -> Provider:
    """Instantiate the provider named in ``sandbox.provider``."""
    try:
        dotted = PROVIDERS[name]
    except KeyError:
        raise ConfigError(f"{name!r} is not a provider (known: {', '.join(PROVIDERS)})", "sandbox.provider") from None
    module, _, cls = dotted.rpartition(".")
    return getattr(importlib.import_module(module), cls)(config)


__all__ = ["MachineSpec", "Provider", "ProviderCheck", "PROVIDERS", "load_provider"]
