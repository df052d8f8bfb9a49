-- The audit chain head, kept outside the audit table so that removing records from the end of
-- the log (or all of them) is detected: one row, MAC'd under a key derived from the root key,
-- advanced by every append in the same transaction. `mac` is NULL only until the node next
-- starts after this migration: it then seals the head it finds (trust on first use, written as
-- a `palyra.audit/HeadSealed` record into the chain).
CREATE TABLE audit_head (
    id       INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    sequence INTEGER NOT NULL,          -- the last record's sequence, 0 for an empty log
    hash     TEXT NOT NULL,             -- its hex chain hash (64 zeros for an empty log)
    mac      TEXT                       -- hex HMAC-SHA256 of AuditHead::message, NULL = unsealed
) STRICT;

INSERT INTO audit_head (id, sequence, hash, mac) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', NULL);
