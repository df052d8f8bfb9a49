-- Hash-chained record of authorization decisions. Appended only by the audit writer.
CREATE TABLE audit (
    sequence  INTEGER PRIMARY KEY NOT NULL, -- dense, from 1
    at        INTEGER NOT NULL,             -- unix milliseconds
    principal TEXT NOT NULL,
    action    TEXT NOT NULL,
    resource  TEXT NOT NULL,
    decision  TEXT NOT NULL,                -- 'allow' or 'deny'
    reason    TEXT NOT NULL,
    hash      TEXT NOT NULL                 -- hex HMAC-SHA256 over the previous hash and this row
) STRICT;
