-- Pairing handshake sessions (PROTOCOLS.md §1), so that a StartPairing survives a restart of
-- the node until its FinishPairing. A session lives 2 minutes and is single use: FinishPairing
-- deletes the row before anything else (success or failure); expired rows are pruned.
--
-- sealed_state is the node's session state (src/pairing/session.rs, versioned encoding,
-- confirmation key material included) sealed with the internal seal key, its AAD bound to
-- session_id: a blob moved to another row does not open. expires_at is the same expiry in
-- the clear, for pruning and refusal without opening anything.
CREATE TABLE pairing_sessions (
    session_id   TEXT PRIMARY KEY NOT NULL,           -- 32 lowercase hex chars, random
    sealed_state BLOB NOT NULL CHECK (length(sealed_state) <= 65536),
    expires_at   INTEGER NOT NULL                      -- unix milliseconds
) STRICT;

CREATE INDEX pairing_sessions_expiry ON pairing_sessions (expires_at);
