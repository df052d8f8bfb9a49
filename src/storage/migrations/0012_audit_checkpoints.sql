-- Signed audit checkpoints (crate::audit::Checkpoint): "the log was at `sequence` with `hash`",
-- signed by the node's Ed25519 identity key. Every checkpoint is kept (a small table), so a
-- verifier or a witness can check anything from any of them. A `prune` checkpoint is written
-- in the transaction that removes the records up to and including its sequence: the first
-- kept record's previous hash is its hash.
CREATE TABLE audit_checkpoints (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of writing, never reused
    kind      TEXT NOT NULL CHECK (kind IN ('prune', 'verified', 'served')),
    sequence  INTEGER NOT NULL,                   -- the record it names (0: the empty log)
    hash      TEXT NOT NULL,                      -- that record's hex chain hash
    at        INTEGER NOT NULL,                   -- unix milliseconds, signed
    signature TEXT NOT NULL                       -- hex Ed25519 over Checkpoint::message
) STRICT;

CREATE INDEX audit_checkpoints_by_kind ON audit_checkpoints (kind, sequence);
CREATE INDEX audit_checkpoints_by_sequence ON audit_checkpoints (sequence);
