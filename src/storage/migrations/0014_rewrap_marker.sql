-- The index of envelopes by KEK generation served only key rotation, yet every write of a new
-- secret paid for it: one more random page of the B-tree in the WAL per write (about a fifth of
-- a write's WAL bytes). A rotation scans the versions in key order anyway; what the index also
-- gave, knowing at start whether an interrupted rotation left envelopes behind, is now this
-- marker: the generation every envelope has been rewrapped to. '0' makes the first start after
-- this migration check every envelope once, then record the current generation.
DROP INDEX IF EXISTS secret_versions_by_generation;
INSERT OR REPLACE INTO meta (key, value) VALUES ('rewrapped_generation', '0');
