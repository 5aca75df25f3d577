"""Provider registry: the one list of providers, as dotted paths imported lazily, so a provider's
heavy dependency (libvirt, docker, vagrant) loads only when that provider is used. The core never
imports a provider's module. A new provider is a module plus one line here."""
from __future__ import annotations

import importlib

from ..exceptions import ConfigError
from .base import Capability, Endpoint, MachineSpec, Provider, ProviderCheck, SnapshotPlan

PROVIDERS = {
    "libvirt": "vmsandbox.providers.libvirt.provider.LibvirtProvider",
    "vagrant": "vmsandbox.providers.vagrant.VagrantProvider",
    "fake": "vmsandbox.providers.fake.FakeProvider",
    "docker": "vmsandbox.providers.docker.DockerProvider",
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


def load_provider(name: str, config, layout) -> Provider:
    """Instantiate the provider named ``name`` for a state directory's ``layout``."""
    return provider_class(name)(config, layout)


__all__ = ["Capability", "Endpoint", "MachineSpec", "Provider", "ProviderCheck", "SnapshotPlan", "PROVIDERS",
           "provider_class", "load_provider"]
