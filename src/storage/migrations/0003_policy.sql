-- Every version of the policy set, from 1. Append-only: an update, a rollback or a reset adds
-- a row; history is never rewritten.
CREATE TABLE policy_versions (
    version    INTEGER PRIMARY KEY NOT NULL CHECK (version >= 1),
    text       TEXT NOT NULL,
    updated_at INTEGER NOT NULL, -- unix milliseconds
    updated_by TEXT NOT NULL     -- a Cedar entity uid, or 'palyra init' / 'palyra policy reset'
) STRICT;
