-- Enrollment keys (crate::pairing::enrollment): reusable pairing codes for headless machines,
-- whose high-entropy secret is the SPAKE2 password and whose handshakes are approved at once.
-- The secret is sealed by the node (internal seal key) with an AAD binding key_id, role,
-- scopes, max_uses, uses, created_at and expires_at, so an edited row no longer opens; every
-- use re-seals it with the new count. NULL once the key is revoked, used up or expired.
CREATE TABLE enrollment_keys (
    key_id        TEXT PRIMARY KEY NOT NULL,                 -- 10 chars, Crockford base32
    role          TEXT NOT NULL CHECK (role IN ('device', 'node')),
    scopes        TEXT NOT NULL DEFAULT '[]',                -- JSON array of granted vault scopes
    max_uses      INTEGER NOT NULL CHECK (max_uses BETWEEN 1 AND 10000),
    uses          INTEGER NOT NULL CHECK (uses BETWEEN 0 AND max_uses),
    created_at    INTEGER NOT NULL,                          -- unix milliseconds
    expires_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    sealed_secret BLOB,
    CHECK (sealed_secret IS NULL OR (revoked_at IS NULL AND uses < max_uses))
) STRICT;

CREATE INDEX enrollment_keys_created ON enrollment_keys (created_at);

-- A pairing request's code_id now names a pairing code or an enrollment key: the table is
-- rebuilt without its foreign key to pairing_codes (SQLite cannot drop a constraint in place).
CREATE TABLE pairing_requests_v2 (
    id                   TEXT PRIMARY KEY NOT NULL,          -- ULID
    code_id              TEXT NOT NULL,                      -- a pairing code or an enrollment key
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

INSERT INTO pairing_requests_v2 SELECT id, code_id, device_name, fingerprint, signing_public_key,
    agreement_public_key, csr_pem, role, state, created_at, expires_at, decided_at, peer_address,
    device_id, certificate_pem, reject_reason, scopes FROM pairing_requests;
DROP TABLE pairing_requests;
ALTER TABLE pairing_requests_v2 RENAME TO pairing_requests;
CREATE INDEX pairing_requests_created ON pairing_requests (created_at);
CREATE INDEX pairing_requests_pending_expiry ON pairing_requests (expires_at) WHERE state = 'pending';
