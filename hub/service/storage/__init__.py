"""Where the hub keeps what it accepted: SQLite (one hub, with its outbox and seals) and
PostgreSQL (hub workers)."""
