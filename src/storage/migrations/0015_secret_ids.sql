-- Secrets get an integer id in order of creation, and their versions are keyed by it. The
-- object id (a SHA-256 of scope and key) placed every new secret on a random page of two
-- B-trees, the primary-key index of `secrets` and `secret_versions` itself: each write of a
-- new secret read both pages back and wrote them to the WAL whole, and a batch of writes
-- shared none of them. Keyed by the id, a new secret's row and first version go at the end of
-- their B-trees, where the batch's other new secrets go too. Secrets are found by (scope, key),
-- whose index stays; the object id stays a column (it is part of the row MAC and of the API)
-- but is not indexed: nothing looks a secret up by it (a read checks it against scope and key).

-- A version row without its secret cannot be reached, and would not be copied below: the
-- writer has enforced the foreign key since 0001, so one is an edit made outside the node.
-- Stop rather than drop it (and the evidence) without a word.
CREATE TEMP TABLE migration_0015_check (
    orphans INTEGER NOT NULL CONSTRAINT secret_versions_rows_without_their_secret CHECK (orphans = 0)
);
INSERT INTO migration_0015_check
    SELECT count(*) FROM secret_versions v WHERE NOT EXISTS (SELECT 1 FROM secrets s WHERE s.object_id = v.object_id);
DROP TABLE migration_0015_check;

CREATE TABLE secrets_v2 (
    -- In order of creation (SQLite gives the next one after the largest), from 1. The node
    -- never deletes a secrets row: a deleted secret keeps its row and its history.
    id             INTEGER PRIMARY KEY CHECK (id > 0),
    object_id      TEXT NOT NULL,
    scope          TEXT NOT NULL,
    key            TEXT NOT NULL,
    latest_version INTEGER NOT NULL,
    created_at     INTEGER NOT NULL, -- unix milliseconds
    updated_at     INTEGER NOT NULL,
    deleted        INTEGER NOT NULL DEFAULT 0,
    size           INTEGER NOT NULL,
    mac            BLOB,
    UNIQUE (scope, key)
) STRICT;

INSERT INTO secrets_v2 (id, object_id, scope, key, latest_version, created_at, updated_at, deleted, size, mac)
    SELECT rowid, object_id, scope, key, latest_version, created_at, updated_at, deleted, size, mac
    FROM secrets ORDER BY rowid;

-- One row per version. A destroyed version keeps its row (history) but loses its envelope.
CREATE TABLE secret_versions_v2 (
    secret         INTEGER NOT NULL REFERENCES secrets_v2 (id),
    version        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    size           INTEGER NOT NULL,
    destroyed      INTEGER NOT NULL DEFAULT 0,
    kek_generation INTEGER,          -- NULL once destroyed
    envelope       BLOB,             -- NULL once destroyed
    PRIMARY KEY (secret, version)
) STRICT, WITHOUT ROWID;

INSERT INTO secret_versions_v2 (secret, version, created_at, size, destroyed, kek_generation, envelope)
    SELECT s.id, v.version, v.created_at, v.size, v.destroyed, v.kek_generation, v.envelope
    FROM secret_versions v JOIN secrets_v2 s ON s.object_id = v.object_id
    ORDER BY s.id, v.version;

DROP TABLE secret_versions;
DROP TABLE secrets;
ALTER TABLE secrets_v2 RENAME TO secrets;
ALTER TABLE secret_versions_v2 RENAME TO secret_versions;
