"""Cluster mode (DESIGN 3.12): PostgreSQL state, site ownership, NATS between instances.

Imported only when the config has a ``cluster:`` section: a single process never loads psycopg
or nats-py.
"""
