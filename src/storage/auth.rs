//! The auth profile registry (`auth_profiles`) and pending authorizations (`auth_pending`,
//! migration 0008) as `Store` methods speaking [`crate::auth`] types. Never sees a key, token,
//! verifier or state in the clear: secrets live in the vault, states are stored hashed.

use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{StorageError, Store, events, from_millis, to_millis};
use crate::auth::{OAuth2Config, PendingAuthorization, Profile, ProfileKind, ProfileName, ProfileStatus};
use crate::events::{AUTH_PROFILE_CREATED, AUTH_PROFILE_DELETED, NewEvent};

const COLUMNS: &str = "name, provider, kind, client_id, authorize_url, token_url, scopes, redirect_uri, \
     status, created_at, updated_at, access_expires_at, last_error";
/// Most profiles a listing returns.
const MAX_LISTED: i64 = 10_000;
/// Longest `last_error` kept.
const MAX_ERROR: usize = 512;

impl Store {
    /// Inserts a new profile; `false` when the name is taken.
    pub async fn insert_auth_profile(&self, profile: &Profile) -> Result<bool, StorageError> {
        let p = profile.clone();
        self.write(move |c| {
            let oauth = p.oauth2.clone().unwrap_or_default();
            let scopes = serde_json::to_string(&oauth.scopes).map_err(StorageError::new)?;
            let inserted = c
                .prepare_cached(&format!(
                    "INSERT INTO auth_profiles ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                     ON CONFLICT (name) DO NOTHING"
                ))?
                .execute(params![
                    p.name.as_str(),
                    p.provider,
                    p.kind.as_str(),
                    oauth.client_id,
                    oauth.authorize_url,
                    oauth.token_url,
                    scopes,
                    oauth.redirect_uri,
                    p.status.as_str(),
                    to_millis(p.created_at),
                    to_millis(p.updated_at),
                    p.access_expires_at.map(to_millis),
                    p.last_error,
                ])?;
            if inserted == 1 {
                events::append(
                    c,
                    &NewEvent::new(AUTH_PROFILE_CREATED, p.name.as_str())
                        .with("kind", p.kind.as_str())
                        .with("provider", &p.provider),
                    p.created_at,
                )?;
            }
            Ok::<_, StorageError>(inserted == 1)
        })
        .await
    }

    /// The profile `name`, if any.
    pub async fn auth_profile(&self, name: &ProfileName) -> Result<Option<Profile>, StorageError> {
        let name = name.as_str().to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM auth_profiles WHERE name = ?1"))?
                .query_row([name], profile_from_row)
                .optional()?
                .transpose()
        })
        .await
    }

    /// Every profile, by name.
    pub async fn auth_profiles(&self) -> Result<Vec<Profile>, StorageError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM auth_profiles ORDER BY name LIMIT ?1"))?;
            let rows = stmt.query_map([MAX_LISTED], profile_from_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        })
        .await
    }

    /// Deletes a profile (and its pending authorizations); `false` when there was none.
    pub async fn delete_auth_profile(&self, name: &ProfileName) -> Result<bool, StorageError> {
        let name = name.as_str().to_owned();
        self.write(move |c| {
            c.prepare_cached("DELETE FROM auth_pending WHERE profile = ?1")?.execute([&name])?;
            let deleted = c.prepare_cached("DELETE FROM auth_profiles WHERE name = ?1")?.execute([&name])?;
            if deleted == 1 {
                events::append(c, &NewEvent::new(AUTH_PROFILE_DELETED, name.as_str()), SystemTime::now())?;
            }
            Ok::<_, StorageError>(deleted == 1)
        })
        .await
    }

    /// Records a profile's status, access-token expiry and last error, and with `event` (one
    /// of the `auth.profile.*` kinds) the event of that change, in the same transaction.
    pub async fn set_auth_status(
        &self,
        name: &ProfileName,
        status: ProfileStatus,
        access_expires_at: Option<SystemTime>,
        last_error: &str,
        event: Option<&'static str>,
        now: SystemTime,
    ) -> Result<(), StorageError> {
        let name = name.as_str().to_owned();
        let last_error: String = last_error.chars().take(MAX_ERROR).collect();
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE auth_profiles SET status = ?2, access_expires_at = ?3, last_error = ?4, updated_at = ?5 \
                 WHERE name = ?1",
            )?
            .execute(params![name, status.as_str(), access_expires_at.map(to_millis), last_error, to_millis(now)])?;
            if let Some(kind) = event {
                events::append(c, &NewEvent::new(kind, name.as_str()).with("status", status.as_str()), now)?;
            }
            Ok::<_, StorageError>(())
        })
        .await
    }

    /// Stores a pending authorization, pruning expired ones.
    pub async fn insert_auth_pending(
        &self,
        pending: &PendingAuthorization,
        now: SystemTime,
    ) -> Result<(), StorageError> {
        let p = pending.clone();
        self.write(move |c| {
            prune_pending(c, to_millis(now))?;
            c.prepare_cached(
                "INSERT INTO auth_pending (state_hash, profile, redirect_uri, expires_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![p.state_hash, p.profile.as_str(), p.redirect_uri, to_millis(p.expires_at)])?;
            Ok::<_, StorageError>(())
        })
        .await
    }

    /// Takes the pending authorization of `state_hash` out (single use: the row is deleted
    /// on the single writer, so two completions cannot both get it); `None` when there is
    /// none or it expired at `now`.
    pub async fn take_auth_pending(
        &self,
        state_hash: &str,
        now: SystemTime,
    ) -> Result<Option<PendingAuthorization>, StorageError> {
        let hash = state_hash.to_owned();
        let now = to_millis(now);
        self.write(move |c| {
            let taken = c
                .prepare_cached(
                    "DELETE FROM auth_pending WHERE state_hash = ?1 RETURNING profile, redirect_uri, expires_at",
                )?
                .query_row([&hash], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))
                .optional()?;
            prune_pending(c, now)?;
            let Some((profile, redirect_uri, expires_at)) = taken else { return Ok(None) };
            if expires_at <= now {
                return Ok(None);
            }
            let profile = ProfileName::parse(&profile).map_err(|_| StorageError::corrupt("auth_pending.profile"))?;
            Ok::<_, StorageError>(Some(PendingAuthorization {
                state_hash: hash,
                profile,
                redirect_uri,
                expires_at: from_millis(expires_at),
            }))
        })
        .await
    }
}

fn prune_pending(c: &Connection, now: i64) -> Result<(), StorageError> {
    c.prepare_cached("DELETE FROM auth_pending WHERE expires_at <= ?1")?.execute([now])?;
    Ok(())
}

fn profile_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Profile, StorageError>> {
    let name: String = r.get(0)?;
    let kind: String = r.get(2)?;
    let scopes: String = r.get(6)?;
    let status: String = r.get(8)?;
    let config = OAuth2Config {
        client_id: r.get(3)?,
        authorize_url: r.get(4)?,
        token_url: r.get(5)?,
        scopes: Vec::new(),
        redirect_uri: r.get(7)?,
    };
    let provider: String = r.get(1)?;
    let created_at: i64 = r.get(9)?;
    let updated_at: i64 = r.get(10)?;
    let access_expires_at: Option<i64> = r.get(11)?;
    let last_error: String = r.get(12)?;
    Ok((|| {
        let name = ProfileName::parse(&name).map_err(|_| StorageError::corrupt("auth_profiles.name"))?;
        let kind =
            ProfileKind::from_stored(&kind).ok_or_else(|| StorageError::corrupt("auth_profiles.kind"))?;
        let status = ProfileStatus::from_stored(&status)
            .ok_or_else(|| StorageError::corrupt("auth_profiles.status"))?;
        let scopes: Vec<String> =
            serde_json::from_str(&scopes).map_err(|_| StorageError::corrupt("auth_profiles.scopes"))?;
        Ok(Profile {
            name,
            provider,
            kind,
            oauth2: (kind == ProfileKind::OAuth2).then_some(OAuth2Config { scopes, ..config }),
            status,
            created_at: from_millis(created_at),
            updated_at: from_millis(updated_at),
            access_expires_at: access_expires_at.map(from_millis),
            last_error,
        })
    })())
}
