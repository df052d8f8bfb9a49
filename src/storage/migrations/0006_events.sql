-- The event log: one row per committed change, appended in the change's own transaction.
-- AUTOINCREMENT: a sequence is never reused, even after retention has pruned every row, and a
-- rolled-back append gives its number back (the counter is part of the transaction).
CREATE TABLE events (
    sequence   INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, -- dense, increasing, from 1
    at         INTEGER NOT NULL,                           -- unix milliseconds of the commit
    kind       TEXT NOT NULL,                              -- e.g. 'vault.secret.written'
    subject    TEXT NOT NULL,
    attributes TEXT NOT NULL                               -- JSON object of strings; never a secret
) STRICT;
CREATE INDEX events_at ON events (at);
