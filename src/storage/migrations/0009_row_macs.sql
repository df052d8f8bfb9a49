-- Row MACs (crate::integrity): HMAC-SHA256 under a key derived from the root key over the
-- columns that decide what is served or allowed. NULL only until the node's first open after
-- this migration, which MACs every existing row once (the 'row_macs' marker below) and from
-- then on treats a missing or wrong MAC as an integrity error.
ALTER TABLE secrets ADD COLUMN mac BLOB;
ALTER TABLE devices ADD COLUMN mac BLOB;
ALTER TABLE policy_versions ADD COLUMN mac BLOB;

INSERT INTO meta (key, value) VALUES ('row_macs', 'backfill');
