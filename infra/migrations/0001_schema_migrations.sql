-- Bookkeeping for the migration runner (infra/migrate.py): one row per applied file.
CREATE TABLE schema_migrations (
    version     integer PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
