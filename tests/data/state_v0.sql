-- The state database schema of vmsandbox 0.1.0 (schema version 0), for the migration test.

CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    box TEXT NOT NULL,
    domain TEXT NOT NULL,
    ssh_port INTEGER NOT NULL UNIQUE,
    cpu TEXT NOT NULL, memory TEXT NOT NULL, disk TEXT NOT NULL,
    network_mode TEXT NOT NULL,
    persistent INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    operation TEXT NOT NULL,
    sandbox_id TEXT,
    sandbox_name TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_sandbox ON audit(sandbox_name, seq);
-- The qcow2 layer tree. parent NULL: the layer stands on its box image. A frozen layer never changes.
CREATE TABLE IF NOT EXISTS layers (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    parent TEXT REFERENCES layers(id),
    box TEXT NOT NULL,
    owner TEXT NOT NULL,              -- sandbox that wrote it
    frozen INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    name TEXT NOT NULL,
    layer TEXT NOT NULL REFERENCES layers(id),
    memory_path TEXT,                 -- libvirt save image (maybe .zst); NULL: disk only
    cpu TEXT NOT NULL, memory TEXT NOT NULL,
    created_at REAL NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    UNIQUE(sandbox_id, name)
);
-- Extra SSH ports held by a sandbox while a second guest of it starts (rollback).
CREATE TABLE IF NOT EXISTS port_holds (
    port INTEGER PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
-- Multi-step operations in flight: what they planned to create, how far they got.
CREATE TABLE IF NOT EXISTS journal (
    id TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    sandbox_id TEXT,
    step TEXT NOT NULL,
    data TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL
);
