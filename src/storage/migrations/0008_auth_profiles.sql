-- Auth profiles (issue 9): the registry of credentials the node uses to call external
-- providers. Keys and tokens are not here: they are sealed in the vault under the reserved
-- scope palyra/auth/<name>. This table holds what may be shown (GetProfile).
CREATE TABLE auth_profiles (
    name              TEXT PRIMARY KEY NOT NULL,   -- one scope segment
    provider          TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('api_key', 'oauth2')),
    client_id         TEXT NOT NULL DEFAULT '',
    authorize_url     TEXT NOT NULL DEFAULT '',
    token_url         TEXT NOT NULL DEFAULT '',
    scopes            TEXT NOT NULL DEFAULT '[]',  -- JSON array of strings
    redirect_uri      TEXT NOT NULL DEFAULT '',
    status            TEXT NOT NULL CHECK (status IN ('ready', 'needs_authorization', 'needs_reauthorization')),
    created_at        INTEGER NOT NULL,            -- unix milliseconds
    updated_at        INTEGER NOT NULL,
    access_expires_at INTEGER,                     -- unix milliseconds; NULL when unknown
    last_error        TEXT NOT NULL DEFAULT ''
) STRICT;

-- Pending OAuth 2.0 authorizations: one row per StartAuthorization, taken (deleted) by the
-- CompleteAuthorization that presents its state, so a state is single use. Only the SHA-256 of
-- the state is kept; the PKCE verifier is sealed in the vault (palyra/auth/<name>, key
-- pkce-<state_hash>). Expired rows are pruned.
CREATE TABLE auth_pending (
    state_hash   TEXT PRIMARY KEY NOT NULL,        -- lowercase hex SHA-256 of the state
    profile      TEXT NOT NULL REFERENCES auth_profiles (name) ON DELETE CASCADE,
    redirect_uri TEXT NOT NULL,
    expires_at   INTEGER NOT NULL                  -- unix milliseconds
) STRICT;

CREATE INDEX auth_pending_expiry ON auth_pending (expires_at);
