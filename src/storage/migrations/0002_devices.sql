-- The registry of paired devices (the node's operator included). Rows are never deleted:
-- a revoked device keeps its row, so its certificate stays refused and its history readable.
CREATE TABLE devices (
    id                     TEXT PRIMARY KEY NOT NULL,         -- lower-case ULID
    name                   TEXT NOT NULL,
    fingerprint            TEXT NOT NULL UNIQUE,              -- lowercase hex SHA-256 of the signing key
    signing_public_key     BLOB NOT NULL CHECK (length(signing_public_key) = 32),
    role                   TEXT NOT NULL CHECK (role IN ('admin', 'device', 'node')),
    status                 TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    paired_at              INTEGER NOT NULL,                  -- unix milliseconds
    certificate_expires_at INTEGER NOT NULL,
    revoked_at             INTEGER,                           -- NULL unless revoked
    revoke_reason          TEXT,
    scopes                 TEXT NOT NULL DEFAULT '[]'         -- JSON array of granted vault scopes
) STRICT;
