"""CLI commands for snapshots: snapshot create|list|delete|pin|unpin, rollback, clone, and the
warm pools of snapshots (pool set|list)."""
from __future__ import annotations

import time
from datetime import datetime

import click

from ._context import get_core, print_json, say, table


@click.group("snapshot")
def snapshot():
    """Snapshots of a sandbox (disk, and memory of a running guest)."""


@snapshot.command("create")
@click.argument("name")
@click.argument("snapshot_name")
@click.option("--disk-only", is_flag=True, help="Do not save the guest's memory.")
@click.option("--reason", default=None, help="Why (kept with the snapshot).")
@click.option("--standby/--no-standby", default=None,
              help="Keep a warm standby of it, so a rollback to it is a swap (default: rollback.standby).")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def snapshot_create(ctx, name, snapshot_name, disk_only, reason, standby, json_out):
    """Snapshot sandbox NAME as SNAPSHOT_NAME; the guest keeps running."""
    core = get_core(ctx)
    t = time.monotonic()
    sid = core.create_snapshot(name, snapshot_name, memory=False if disk_only else None,
                               metadata={"reason": reason} if reason else None, standby=standby)
    took = time.monotonic() - t
    if json_out:
        print_json({"id": sid, "name": snapshot_name, "seconds": round(took, 3)})
    else:
        say(f"snapshot {snapshot_name} ({sid}) of {name} in {took * 1000:.0f} ms")


@snapshot.command("list")
@click.argument("name")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def snapshot_list(ctx, name, json_out):
    """List the snapshots of sandbox NAME."""
    snaps = get_core(ctx).list_snapshots(name)
    if json_out:
        print_json([s.to_dict() for s in snaps])
        return
    table(["NAME", "ID", "MEMORY", "PINNED", "CREATED", "NOTE"],
          [[s.name, s.id, "yes" if s.has_memory else "no", "yes" if s.pinned else "",
            datetime.fromtimestamp(s.created_at).strftime("%Y-%m-%d %H:%M:%S"),
            s.metadata.get("reason", "")] for s in snaps])


@snapshot.command("delete")
@click.argument("name")
@click.argument("snapshot_ref")
@click.pass_context
def snapshot_delete(ctx, name, snapshot_ref):
    """Delete a snapshot (its disk layer is kept while anything stands on it)."""
    get_core(ctx).delete_snapshot(name, snapshot_ref)
    say(f"deleted snapshot {snapshot_ref} of {name}")


@snapshot.command("pin")
@click.argument("name")
@click.argument("snapshot_ref")
@click.pass_context
def snapshot_pin(ctx, name, snapshot_ref):
    """Keep a snapshot through retention (rollback.retention_days, max_snapshots, max_memory_bytes)."""
    row = get_core(ctx).pin_snapshot(name, snapshot_ref, True)
    say(f"pinned snapshot {row.name} ({row.id}) of {name}")


@snapshot.command("unpin")
@click.argument("name")
@click.argument("snapshot_ref")
@click.pass_context
def snapshot_unpin(ctx, name, snapshot_ref):
    """Let retention remove a snapshot again."""
    row = get_core(ctx).pin_snapshot(name, snapshot_ref, False)
    say(f"unpinned snapshot {row.name} ({row.id}) of {name}")


@click.command("rollback")
@click.argument("name")
@click.argument("snapshot_ref")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def rollback(ctx, name, snapshot_ref, json_out):
    """Roll sandbox NAME back to SNAPSHOT (a name or an id)."""
    core = get_core(ctx)
    t = time.monotonic()
    core.rollback(name, snapshot_ref)
    took = time.monotonic() - t
    if json_out:
        print_json({"sandbox": name, "snapshot": snapshot_ref, "seconds": round(took, 3)})
    else:
        say(f"rolled {name} back to {snapshot_ref} in {took:.2f} s")


@click.command("clone")
@click.argument("snapshot_ref")
@click.argument("new_name")
@click.option("--network", "network_mode", type=click.Choice(["none", "nat"]), default=None)
@click.option("--persistent", is_flag=True)
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def clone(ctx, snapshot_ref, new_name, network_mode, persistent, json_out):
    """Start NEW_NAME as a linked clone of SNAPSHOT (an id, or SANDBOX:SNAPSHOT)."""
    core = get_core(ctx)
    cfg = {"clone_from": snapshot_ref}
    if network_mode:
        cfg["network_mode"] = network_mode
    if persistent:
        cfg["persistent"] = True
    t = time.monotonic()
    sid = core.create_sandbox(new_name, cfg)
    info = core.get(sid)
    if json_out:
        print_json({**info.to_dict(), "seconds": round(time.monotonic() - t, 3)})
    else:
        say(f"cloned {snapshot_ref} as {new_name} ({sid}) in {time.monotonic() - t:.1f} s; "
                   f"ssh on 127.0.0.1:{info.ssh_port}")


@click.group("pool")
def pool():
    """Warm pools: paused standbys of a memory snapshot that clones take instead of starting."""


@pool.command("set")
@click.argument("snapshot_ref")
@click.argument("size", type=click.IntRange(min=0))
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def pool_set(ctx, snapshot_ref, size, json_out):
    """Keep SIZE standbys of SNAPSHOT (SANDBOX:NAME or an id) ready; 0 removes the pool."""
    core = get_core(ctx)
    t = time.monotonic()
    out = core.set_pool(snapshot_ref, size)
    if not json_out:
        say(f"pool of {out['name']}: {size} standby(s) wanted; filling..." if size else
            f"pool of {out['name']}: removing its standbys...")
    core.snapshots.wait_background()            # the standbys are made (or dropped) by this process
    ready = next((p["ready"] for p in core.list_pools() if p["snapshot"] == out["snapshot"] and p["kind"] == "pool"), 0)
    if json_out:
        print_json({**out, "ready": ready, "seconds": round(time.monotonic() - t, 3)})
    else:
        short = " (short: see `vmsandbox audit` for why, e.g. rollback.standby_memory)" if ready < size else ""
        say(f"pool of {out['name']}: {ready} of {size} ready in {time.monotonic() - t:.1f} s{short}")


@pool.command("list")
@click.option("--json", "json_out", is_flag=True)
@click.pass_context
def pool_list(ctx, json_out):
    """Standby targets (pools, and rollback standbys) with how many are ready and their memory."""
    pools = get_core(ctx).list_pools()
    if json_out:
        print_json(pools)
        return
    table(["SNAPSHOT", "ID", "KIND", "SIZE", "READY", "STARTING", "MEMORY"],
          [[p["name"], p["snapshot"], p["kind"], p["size"], p["ready"], p["starting"],
            f"{p['memory_bytes'] >> 20} MiB"] for p in pools])


COMMANDS = [snapshot, rollback, clone, pool]
