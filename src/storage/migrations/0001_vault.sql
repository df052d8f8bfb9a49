-- Node-wide settings: schema facts, key backend, KEK generation.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

INSERT INTO meta (key, value) VALUES ('kek_generation', '1');

-- One row per secret: its name and its latest state.
CREATE TABLE secrets (
    object_id      TEXT PRIMARY KEY NOT NULL,
    scope          TEXT NOT NULL,
    key            TEXT NOT NULL,
    latest_version INTEGER NOT NULL,
    created_at     INTEGER NOT NULL, -- unix milliseconds
    updated_at     INTEGER NOT NULL,
    deleted        INTEGER NOT NULL DEFAULT 0,
    size           INTEGER NOT NULL,
    UNIQUE (scope, key)
) STRICT;

-- One row per version. A destroyed version keeps its row (history) but loses its envelope.
CREATE TABLE secret_versions (
    object_id      TEXT NOT NULL REFERENCES secrets (object_id),
    version        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    size           INTEGER NOT NULL,
    destroyed      INTEGER NOT NULL DEFAULT 0,
    kek_generation INTEGER,          -- NULL once destroyed
    envelope       BLOB,             -- NULL once destroyed
    PRIMARY KEY (object_id, version)
) STRICT, WITHOUT ROWID;

CREATE INDEX secret_versions_by_generation ON secret_versions (kek_generation)
    WHERE envelope IS NOT NULL;
