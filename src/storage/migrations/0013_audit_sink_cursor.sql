-- Where each audit sink is: the last record it delivered (written and fsynced), one row per
-- sink, keyed by its name (`file:/var/log/palyra/audit.jsonl`). Advanced after each delivered
-- batch; a sink resumes after it (or after the last line its file already holds, when that is
-- the table's own record), so a failing sink loses nothing and repeats nothing.
CREATE TABLE audit_sink_cursor (
    sink      TEXT PRIMARY KEY NOT NULL,
    delivered INTEGER NOT NULL CHECK (delivered >= 0)
) STRICT;
