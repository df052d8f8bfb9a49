-- Pairing codes and pairing requests (PROTOCOLS.md §1). Handshake sessions live in memory
-- for their 2 minutes and are not stored.

-- A code is single use. Its PIN is sealed by the node (internal seal key, AAD bound to the
-- code id) and erased (NULL) once the code is used, burned or expired.
CREATE TABLE pairing_codes (
    code_id       TEXT PRIMARY KEY NOT NULL,                -- 10 chars, Crockford base32
    sealed_pin    BLOB,
    role          TEXT NOT NULL CHECK (role IN ('device', 'node')),
    created_at    INTEGER NOT NULL,                          -- unix milliseconds
    expires_at    INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL CHECK (max_attempts BETWEEN 1 AND 10),
    attempts_left INTEGER NOT NULL CHECK (attempts_left BETWEEN 0 AND max_attempts),
    state         TEXT NOT NULL CHECK (state IN ('active', 'used', 'burned', 'expired')),
    CHECK (state = 'active' OR sealed_pin IS NULL)
) STRICT;

CREATE INDEX pairing_codes_active_expiry ON pairing_codes (expires_at) WHERE state = 'active';

-- A device's request to join, created by a successful FinishPairing; decided by an admin.
CREATE TABLE pairing_requests (
    id                   TEXT PRIMARY KEY NOT NULL,          -- ULID
    code_id              TEXT NOT NULL REFERENCES pairing_codes (code_id),
    device_name          TEXT NOT NULL,
    fingerprint          TEXT NOT NULL,
    signing_public_key   BLOB NOT NULL CHECK (length(signing_public_key) = 32),
    agreement_public_key BLOB NOT NULL CHECK (length(agreement_public_key) = 32),
    csr_pem              TEXT NOT NULL,
    role                 TEXT NOT NULL CHECK (role IN ('device', 'node')),
    state                TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'expired')),
    created_at           INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL,
    decided_at           INTEGER,
    peer_address         TEXT NOT NULL DEFAULT '',
    device_id            TEXT,                                -- set once approved
    certificate_pem      TEXT,                                -- the issued certificate, for GetPairingStatus
    reject_reason        TEXT NOT NULL DEFAULT '',
    scopes               TEXT NOT NULL DEFAULT '[]'           -- JSON array of granted vault scopes
) STRICT;

CREATE INDEX pairing_requests_created ON pairing_requests (created_at);
CREATE INDEX pairing_requests_pending_expiry ON pairing_requests (expires_at) WHERE state = 'pending';
