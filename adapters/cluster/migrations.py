"""The PostgreSQL schema of cluster mode, as numbered migrations applied at every start.

Each migration runs once, in its own transaction, in order; ``schema_migrations`` records the
versions done. Instances starting together take a transaction-level advisory lock first, so one
of them migrates and the others find the work done.
"""

from __future__ import annotations

import psycopg

__all__ = ["MIGRATE_LOCK", "MIGRATIONS", "migrate"]

MIGRATE_LOCK = 0x62616C31
"""Advisory lock key held while migrating (any value no other lock in this database uses)."""

MIGRATIONS: tuple[str, ...] = (
    # 1: the key-value documents and the outbox of the SQLite store, and the sites to own.
    """
    CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated DOUBLE PRECISION NOT NULL);
    CREATE TABLE outbox (
        id BIGINT PRIMARY KEY,
        instance_id TEXT NOT NULL,
        path TEXT NOT NULL,
        body TEXT NOT NULL,
        headers TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try DOUBLE PRECISION NOT NULL,
        created DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX outbox_instance ON outbox (instance_id, id);
    CREATE SEQUENCE outbox_block;
    CREATE TABLE cluster_sites (
        site_id TEXT PRIMARY KEY,
        lock_key SERIAL UNIQUE,
        epoch BIGINT NOT NULL DEFAULT 0,
        owner TEXT,
        clean BOOLEAN NOT NULL DEFAULT TRUE
    );
    """,
    # 2: one outbox for the whole cluster: each row names its site and is delivered by the site's
    # owner (rows without a site by the owner of the first site); claimed under the owner's epoch,
    # kept an hour once sent (``sent_at``) for audit.
    """
    ALTER TABLE outbox ADD COLUMN site_id TEXT, ADD COLUMN claimed_by TEXT, ADD COLUMN claim_epoch BIGINT,
        ADD COLUMN claimed_at TIMESTAMPTZ, ADD COLUMN claims INTEGER NOT NULL DEFAULT 0,
        ADD COLUMN sent_at TIMESTAMPTZ, ADD COLUMN sent_by TEXT;
    CREATE INDEX outbox_unsent ON outbox (created, id) WHERE sent_at IS NULL;
    """,
    # 3: the X-Request-IDs of the requests applied, whichever instance took them (a sender's
    # repeat is answered without being applied twice), kept ``SEEN_KEEP_S``.
    """
    CREATE TABLE seen_requests (request_id TEXT PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now());
    CREATE INDEX seen_requests_at ON seen_requests (at);
    """,
    # 4: the OCPI callbacks in the same outbox (``channel`` 'ocpi', ``path`` the URL), delivered by
    # the owner of the session's site like the OSCP messages.
    """
    ALTER TABLE outbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'oscp';
    """,
    # 5: a message given up on (an OCPI callback past its timeout, or to a party gone) is marked
    # ``dropped_at`` / ``dropped_by``, never sent: not a delivered one (``sent_at``); kept
    # ``KEEP_DROPPED_S`` for the operator to see.
    """
    ALTER TABLE outbox ADD COLUMN dropped_at TIMESTAMPTZ, ADD COLUMN dropped_by TEXT;
    DROP INDEX outbox_unsent;
    CREATE INDEX outbox_unsent ON outbox (created, id) WHERE sent_at IS NULL AND dropped_at IS NULL;
    """,
)


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Bring the schema up to date; returns how many migrations ran now."""
    ran = 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                     "applied TIMESTAMPTZ NOT NULL DEFAULT now())")
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        done = int(row[0]) if row else 0  # type: ignore[call-overload]
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version <= done:
                continue
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            ran += 1
    return ran
