//! The auth profile registry (`auth_profiles`) and pending authorizations (`auth_pending`,
//! migration 0008): [`ProfileStore`] on `Store`, speaking [`crate::auth`] types. Never sees a key, token,
//! verifier or state in the clear: secrets live in the vault, states are stored hashed.

use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::store_error::BoxFuture;

use super::{Store, StoreError, events, from_millis, to_millis};
use crate::auth::store::ProfileStore;
use crate::auth::{OAuth2Config, PendingAuthorization, Profile, ProfileKind, ProfileName, ProfileStatus};
use crate::events::{AUTH_PROFILE_CREATED, AUTH_PROFILE_DELETED, NewEvent};

const COLUMNS: &str = "name, provider, kind, client_id, authorize_url, token_url, scopes, redirect_uri, \
     status, created_at, updated_at, access_expires_at, last_error";
/// Most profiles a listing returns.
const MAX_LISTED: i64 = 10_000;
/// Longest `last_error` kept.
const MAX_ERROR: usize = 512;

impl ProfileStore for Store {
    fn insert_profile(&self, profile: &Profile) -> BoxFuture<'_, Result<bool, StoreError>> {
        let p = profile.clone();
        Box::pin(self.write(move |c| {
            let oauth = p.oauth2.clone().unwrap_or_default();
            let scopes = serde_json::to_string(&oauth.scopes).map_err(StoreError::new)?;
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
            Ok::<_, StoreError>(inserted == 1)
        }))
    }

    fn profile(&self, name: &ProfileName) -> BoxFuture<'_, Result<Option<Profile>, StoreError>> {
        let name = name.as_str().to_owned();
        Box::pin(self.read(move |c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM auth_profiles WHERE name = ?1"))?
                .query_row([name], profile_from_row)
                .optional()?
                .transpose()
        }))
    }

    fn profiles(&self) -> BoxFuture<'_, Result<Vec<Profile>, StoreError>> {
        Box::pin(self.read(|c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM auth_profiles ORDER BY name LIMIT ?1"))?;
            let rows = stmt.query_map([MAX_LISTED], profile_from_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        }))
    }

    fn delete_profile(&self, name: &ProfileName) -> BoxFuture<'_, Result<bool, StoreError>> {
        let name = name.as_str().to_owned();
        Box::pin(self.write(move |c| {
            c.prepare_cached("DELETE FROM auth_pending WHERE profile = ?1")?.execute([&name])?;
            let deleted = c.prepare_cached("DELETE FROM auth_profiles WHERE name = ?1")?.execute([&name])?;
            if deleted == 1 {
                events::append(c, &NewEvent::new(AUTH_PROFILE_DELETED, name.as_str()), SystemTime::now())?;
            }
            Ok::<_, StoreError>(deleted == 1)
        }))
    }

    fn set_status(
        &self,
        name: &ProfileName,
        status: ProfileStatus,
        access_expires_at: Option<SystemTime>,
        last_error: &str,
        event: Option<&'static str>,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = name.as_str().to_owned();
        let last_error: String = last_error.chars().take(MAX_ERROR).collect();
        Box::pin(self.write(move |c| {
            c.prepare_cached(
                "UPDATE auth_profiles SET status = ?2, access_expires_at = ?3, last_error = ?4, updated_at = ?5 \
                 WHERE name = ?1",
            )?
            .execute(params![name, status.as_str(), access_expires_at.map(to_millis), last_error, to_millis(now)])?;
            if let Some(kind) = event {
                events::append(c, &NewEvent::new(kind, name.as_str()).with("status", status.as_str()), now)?;
            }
            Ok::<_, StoreError>(())
        }))
    }

    fn insert_pending(
        &self,
        pending: &PendingAuthorization,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let p = pending.clone();
        Box::pin(self.write(move |c| {
            prune_pending(c, to_millis(now))?;
            c.prepare_cached(
                "INSERT INTO auth_pending (state_hash, profile, redirect_uri, expires_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![p.state_hash, p.profile.as_str(), p.redirect_uri, to_millis(p.expires_at)])?;
            Ok::<_, StoreError>(())
        }))
    }

    /// Single use: the row is deleted on the single writer, so two completions cannot both
    /// get it.
    fn take_pending(
        &self,
        state_hash: &str,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Option<PendingAuthorization>, StoreError>> {
        let hash = state_hash.to_owned();
        let now = to_millis(now);
        Box::pin(self.write(move |c| {
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
            let profile = ProfileName::parse(&profile).map_err(|_| StoreError::corrupt("auth_pending.profile"))?;
            Ok::<_, StoreError>(Some(PendingAuthorization {
                state_hash: hash,
                profile,
                redirect_uri,
                expires_at: from_millis(expires_at),
            }))
        }))
    }
}

fn prune_pending(c: &Connection, now: i64) -> Result<(), StoreError> {
    c.prepare_cached("DELETE FROM auth_pending WHERE expires_at <= ?1")?.execute([now])?;
    Ok(())
}

fn profile_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Profile, StoreError>> {
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
        let name = ProfileName::parse(&name).map_err(|_| StoreError::corrupt("auth_profiles.name"))?;
        let kind =
            ProfileKind::from_stored(&kind).ok_or_else(|| StoreError::corrupt("auth_profiles.kind"))?;
        let status =
            ProfileStatus::from_stored(&status).ok_or_else(|| StoreError::corrupt("auth_profiles.status"))?;
        let scopes: Vec<String> =
            serde_json::from_str(&scopes).map_err(|_| StoreError::corrupt("auth_profiles.scopes"))?;
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
