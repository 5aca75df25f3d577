"""Helpers for tests of the Docker provider: the daemon the set-up started (or $DOCKER_HOST), the
container image made from the tiny box, and what a state directory left in the daemon."""
import pytest

from vmsandbox.exceptions import ProviderError


def require_docker(tiny_box):
    """A Docker client with ``vmsandbox/tiny`` present (imported from the tiny box if missing);
    skips when no daemon answers (scripts/setup.sh starts one)."""
    from vmsandbox.providers.docker import DEFAULT_IMAGE, connect, import_box
    try:
        client = connect()
    except ProviderError as exc:
        pytest.skip(f"no Docker daemon: {exc}")
    try:
        client.api.inspect_image(DEFAULT_IMAGE)
    except Exception:
        import_box(tiny_box, DEFAULT_IMAGE)
    return client


def docker_leftovers(client, prefix: str, state_dir: str) -> dict:
    """Containers and layer images that carry this state directory's prefix or label."""
    containers = [c.name for c in client.containers.list(all=True) if c.name.startswith(prefix)
                  or c.labels.get("vmsandbox.owner") == state_dir]
    images = [t for i in client.images.list() for t in i.tags if t.startswith(f"{prefix}layers-")]
    return {"containers": sorted(containers), "images": sorted(images)}
