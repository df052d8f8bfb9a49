//! Pairing codes, enrollment keys, handshake sessions and requests (`pairing_codes`,
//! `enrollment_keys`, `pairing_sessions`, `pairing_requests`): the SQLite implementation of [`PairingStore`], speaking
//! [`crate::pairing`] types. The rules (attempts, expiry, single use) are the domain's
//! ([`PairingCode::take_attempt`] and friends); here they run inside one write transaction so
//! concurrent starts cannot spend the same attempt twice and concurrent finishes cannot take
//! the same session twice. Never sees a PIN or a session's state in the clear (both arrive
//! sealed).

use super::events;
use crate::events::{NewEvent, PAIRING_APPROVED, PAIRING_REJECTED, PAIRING_REQUESTED};
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::devices::{self, parse_scopes, scopes_json};
use super::{Store, StoreError, from_millis, to_millis};
use crate::identity::{Device, DeviceId, IdentityError, Role};
use crate::pairing::store::{Outcome, PairingStore};
use crate::pairing::enrollment::Grants;
use crate::pairing::{
    CodeId, CodeState, EnrollmentKey, PairingCode, PairingError, PairingRequest, RequestState,
};
use crate::store_error::BoxFuture;

const CODE_COLUMNS: &str =
    "code_id, sealed_pin, role, created_at, expires_at, max_attempts, attempts_left, state";
const KEY_COLUMNS: &str =
    "key_id, role, scopes, max_uses, uses, created_at, expires_at, revoked_at, sealed_secret";
const REQUEST_COLUMNS: &str = "id, code_id, device_name, fingerprint, signing_public_key, \
     agreement_public_key, csr_pem, role, state, created_at, expires_at, decided_at, peer_address, \
     device_id, certificate_pem, reject_reason, scopes";
/// Most requests a listing returns.
const MAX_LISTED: i64 = 1000;

impl Store {
    /// The code `code_id`, if any (for tests that look at a code after a flow; the node reads
    /// codes through [`PairingStore`]).
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub async fn pairing_code(&self, code_id: &CodeId) -> Result<Option<PairingCode>, StoreError> {
        PairingStore::code(self, code_id).await
    }
}

impl PairingStore for Store {
    fn insert_code(&self, code: &PairingCode) -> BoxFuture<'_, Result<(), StoreError>> {
        let code = code.clone();
        Box::pin(self.write(move |c| save_code(c, &code, true)))
    }

    fn code(&self, code_id: &CodeId) -> BoxFuture<'_, Result<Option<PairingCode>, StoreError>> {
        let id = code_id.as_str().to_owned();
        Box::pin(self.read(move |c| load_code(c, &id)))
    }

    fn take_attempt(
        &self,
        code_id: &CodeId,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Outcome<PairingCode>, StoreError>> {
        let id = code_id.as_str().to_owned();
        Box::pin(self.write(move |c| {
            let Some(mut code) = load_code(c, &id)? else { return Ok(Err(PairingError::CodeInvalid)) };
            let taken = code.take_attempt(now);
            save_code(c, &code, false)?;
            Ok(taken.map(|()| code))
        }))
    }

    fn attempt_failed(&self, code_id: &CodeId) -> BoxFuture<'_, Result<(bool, u32), StoreError>> {
        let id = code_id.as_str().to_owned();
        Box::pin(self.write(move |c| {
            let Some(mut code) = load_code(c, &id)? else { return Ok((true, 0)) };
            let burned = code.after_failure();
            save_code(c, &code, false)?;
            Ok((burned, code.attempts_left))
        }))
    }

    fn finish(&self, request: &PairingRequest) -> BoxFuture<'_, Result<Outcome<()>, StoreError>> {
        let request = request.clone();
        Box::pin(self.write(move |c| {
            let Some(mut code) = load_code(c, &request.code_id)? else {
                return Ok(Err(PairingError::CodeInvalid));
            };
            if code.state != CodeState::Active {
                return Ok(Err(PairingError::CodeInvalid));
            }
            code.consume();
            save_code(c, &code, false)?;
            insert_request(c, &request)?;
            let event = NewEvent::new(PAIRING_REQUESTED, request.id.clone())
                .with("device_name", &request.device_name)
                .with("fingerprint", &request.fingerprint)
                .with("role", request.role.as_str());
            events::append(c, &event, request.created_at)?;
            Ok(Ok(()))
        }))
    }

    fn insert_session(
        &self,
        session_id: &str,
        sealed_state: Vec<u8>,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (id, expires_at, now) = (session_id.to_owned(), to_millis(expires_at), to_millis(now));
        Box::pin(self.write(move |c| {
            prune_sessions(c, now)?;
            c.prepare_cached(
                "INSERT INTO pairing_sessions (session_id, sealed_state, expires_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, sealed_state, expires_at])?;
            Ok::<_, StoreError>(())
        }))
    }

    fn take_session(
        &self,
        session_id: &str,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        let (id, now) = (session_id.to_owned(), to_millis(now));
        // One transaction on the single writer, so of concurrent takes at most one gets it; an
        // expired session is deleted and not returned.
        Box::pin(self.write(move |c| {
            let taken: Option<(Vec<u8>, i64)> = c
                .prepare_cached(
                    "DELETE FROM pairing_sessions WHERE session_id = ?1 RETURNING sealed_state, expires_at",
                )?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok::<_, StoreError>(taken.and_then(|(sealed, expires_at)| (expires_at > now).then_some(sealed)))
        }))
    }

    fn request(&self, id: &str) -> BoxFuture<'_, Result<Option<PairingRequest>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.read(move |c| load_request(c, &id)))
    }

    fn requests(
        &self,
        state: Option<RequestState>,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Vec<PairingRequest>, StoreError>> {
        Box::pin(async move {
            let all = self
                .read(move |c| {
                    let sql = format!(
                        "SELECT {REQUEST_COLUMNS} FROM pairing_requests ORDER BY created_at DESC, id DESC LIMIT ?1"
                    );
                    let mut stmt = c.prepare_cached(&sql)?;
                    let rows = stmt.query_map([MAX_LISTED], request_from_row)?;
                    let mut out = Vec::new();
                    for row in rows {
                        out.push(row??);
                    }
                    Ok::<_, StoreError>(out)
                })
                .await?;
            Ok(all.into_iter().filter(|r| state.is_none_or(|s| r.state_at(now) == s)).collect())
        })
    }

    fn expire(&self, now: SystemTime) -> BoxFuture<'_, Result<(), StoreError>> {
        let now = to_millis(now);
        Box::pin(self.write(move |c| {
            prune_sessions(c, now)?;
            c.prepare_cached(
                "UPDATE pairing_codes SET state = 'expired', sealed_pin = NULL \
                 WHERE state = 'active' AND expires_at <= ?1",
            )?
            .execute([now])?;
            c.prepare_cached(
                "UPDATE enrollment_keys SET sealed_secret = NULL \
                 WHERE sealed_secret IS NOT NULL AND expires_at <= ?1",
            )?
            .execute([now])?;
            c.prepare_cached(
                "UPDATE pairing_requests SET state = 'expired', decided_at = expires_at \
                 WHERE state = 'pending' AND expires_at <= ?1",
            )?
            .execute([now])?;
            Ok::<_, StoreError>(())
        }))
    }

    fn approve(
        &self,
        id: &str,
        device: &Device,
        certificate_pem: &str,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Outcome<PairingRequest>, IdentityError>> {
        let (id, device, cert) = (id.to_owned(), device.clone(), certificate_pem.to_owned());
        let mac = self.row_mac();
        Box::pin(self.write(move |c| {
            let request = match pending(c, &id, now)? {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            if devices::load(c, "fingerprint", &device.fingerprint, mac.as_deref())?.is_some() {
                return Err(IdentityError::AlreadyExists(format!(
                    "a device with fingerprint {}",
                    request.fingerprint
                )));
            }
            devices::insert(c, &device, mac.as_deref())?;
            c.prepare_cached(
                "UPDATE pairing_requests SET state = 'approved', decided_at = ?2, device_id = ?3, \
                 certificate_pem = ?4, role = ?5, scopes = ?6 WHERE id IN (?1, upper(?1))",
            )
            .map_err(StoreError::from)?
            .execute(params![
                id,
                to_millis(now),
                device.id.to_string(),
                cert,
                device.role.as_str(),
                scopes_json(&device.scopes)?
            ])
            .map_err(StoreError::from)?;
            let scopes: Vec<&str> = device.scopes.iter().map(|s| s.as_str()).collect();
            let event = NewEvent::new(PAIRING_APPROVED, id.clone())
                .with("device_id", device.id)
                .with("role", device.role.as_str())
                .with("scopes", scopes.join(","));
            events::append(c, &event, now)?;
            Ok(load_request(c, &id)?.ok_or(PairingError::RequestNotFound(id)))
        }))
    }

    fn insert_enrollment_key(&self, key: &EnrollmentKey) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = key.clone();
        Box::pin(self.write(move |c| {
            let sql = format!("INSERT INTO enrollment_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
            c.prepare_cached(&sql)?.execute(params![
                key.key_id.as_str(),
                key.grants.role.as_str(),
                scopes_json(&key.grants.scopes)?,
                key.grants.max_uses,
                key.uses,
                to_millis(key.grants.created_at),
                to_millis(key.grants.expires_at),
                key.revoked_at.map(to_millis),
                key.sealed_secret,
            ])?;
            Ok::<_, StoreError>(())
        }))
    }

    fn enrollment_key(&self, key_id: &CodeId) -> BoxFuture<'_, Result<Option<EnrollmentKey>, StoreError>> {
        let id = key_id.as_str().to_owned();
        Box::pin(self.read(move |c| load_key(c, &id)))
    }

    fn enrollment_keys(
        &self,
        active_only: bool,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Vec<EnrollmentKey>, StoreError>> {
        let now = to_millis(now);
        Box::pin(self.read(move |c| {
            let sql = format!(
                "SELECT {KEY_COLUMNS} FROM enrollment_keys \
                 WHERE ?2 = 0 OR (revoked_at IS NULL AND uses < max_uses AND expires_at > ?3) \
                 ORDER BY created_at DESC, key_id DESC LIMIT ?1"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![MAX_LISTED, active_only, now], key_from_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok::<_, StoreError>(out)
        }))
    }

    fn revoke_enrollment_key(
        &self,
        key_id: &CodeId,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Outcome<EnrollmentKey>, StoreError>> {
        let id = key_id.as_str().to_owned();
        Box::pin(self.write(move |c| {
            c.prepare_cached(
                "UPDATE enrollment_keys SET revoked_at = ?2, sealed_secret = NULL \
                 WHERE key_id = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![id, to_millis(now)])?;
            Ok::<_, StoreError>(load_key(c, &id)?.ok_or(PairingError::EnrollmentKeyNotFound(id)))
        }))
    }

    fn enroll(
        &self,
        key_id: &CodeId,
        seen_uses: u32,
        resealed: Option<Vec<u8>>,
        request: &PairingRequest,
        device: &Device,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Outcome<bool>, IdentityError>> {
        let (id, request, device) = (key_id.as_str().to_owned(), request.clone(), device.clone());
        let mac = self.row_mac();
        Box::pin(self.write(move |c| {
            let Some(key) = load_key(c, &id)? else {
                return Ok(Err(PairingError::EnrollmentKeyNotFound(id)));
            };
            if key.uses != seen_uses {
                return Ok(Ok(false));
            }
            if let Err(e) = key.check_usable(now) {
                return Ok(Err(e));
            }
            if devices::load(c, "fingerprint", &device.fingerprint, mac.as_deref())?.is_some() {
                return Err(IdentityError::AlreadyExists(format!("a device with fingerprint {}", device.fingerprint)));
            }
            c.prepare_cached("UPDATE enrollment_keys SET uses = ?2, sealed_secret = ?3 WHERE key_id = ?1")
                .map_err(StoreError::from)?
                .execute(params![id, seen_uses + 1, resealed])
                .map_err(StoreError::from)?;
            devices::insert(c, &device, mac.as_deref())?;
            insert_request(c, &request)?;
            let scopes: Vec<&str> = device.scopes.iter().map(|s| s.as_str()).collect();
            let event = NewEvent::new(PAIRING_APPROVED, request.id.clone())
                .with("device_id", device.id)
                .with("role", device.role.as_str())
                .with("scopes", scopes.join(","))
                .with("enrollment_key", &id);
            events::append(c, &event, now)?;
            Ok(Ok(true))
        }))
    }

    fn reject(
        &self,
        id: &str,
        reason: &str,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Outcome<PairingRequest>, StoreError>> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        Box::pin(self.write(move |c| {
            if let Err(e) = pending(c, &id, now)? {
                return Ok(Err(e));
            }
            c.prepare_cached(
                "UPDATE pairing_requests SET state = 'rejected', decided_at = ?2, reject_reason = ?3 \
                 WHERE id IN (?1, upper(?1))",
            )?
            .execute(params![id, to_millis(now), reason])?;
            events::append(c, &NewEvent::new(PAIRING_REJECTED, id.clone()), now)?;
            Ok(load_request(c, &id)?.ok_or(PairingError::RequestNotFound(id)))
        }))
    }
}

/// Deletes handshake sessions expired at `now` (unix ms).
fn prune_sessions(c: &Connection, now: i64) -> Result<(), StoreError> {
    c.prepare_cached("DELETE FROM pairing_sessions WHERE expires_at <= ?1")?.execute([now])?;
    Ok(())
}

/// The request `id` if it is pending at `now`; an expiry found here is recorded.
fn pending(c: &Connection, id: &str, now: SystemTime) -> Result<Outcome<PairingRequest>, StoreError> {
    let Some(request) = load_request(c, id)? else {
        return Ok(Err(PairingError::RequestNotFound(id.to_owned())));
    };
    match request.state_at(now) {
        RequestState::Pending => Ok(Ok(request)),
        state => {
            if state != request.state {
                c.prepare_cached(
                    "UPDATE pairing_requests SET state = 'expired', decided_at = expires_at WHERE id IN (?1, upper(?1))",
                )?
                .execute([id])?;
            }
            Ok(Err(PairingError::RequestNotPending { id: id.to_owned(), state: state.as_str() }))
        }
    }
}

fn save_code(c: &Connection, code: &PairingCode, insert: bool) -> Result<(), StoreError> {
    let sql = if insert {
        format!("INSERT INTO pairing_codes ({CODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
    } else {
        "UPDATE pairing_codes SET sealed_pin = ?2, role = ?3, created_at = ?4, expires_at = ?5, \
         max_attempts = ?6, attempts_left = ?7, state = ?8 WHERE code_id = ?1"
            .to_owned()
    };
    c.prepare_cached(&sql)?.execute(params![
        code.code_id.as_str(),
        code.sealed_pin,
        code.role.as_str(),
        to_millis(code.created_at),
        to_millis(code.expires_at),
        code.max_attempts,
        code.attempts_left,
        code.state.as_str(),
    ])?;
    Ok(())
}

fn load_code(c: &Connection, code_id: &str) -> Result<Option<PairingCode>, StoreError> {
    let sql = format!("SELECT {CODE_COLUMNS} FROM pairing_codes WHERE code_id = ?1");
    c.prepare_cached(&sql)?.query_row([code_id], code_from_row).optional()?.transpose()
}

fn code_from_row(row: &Row<'_>) -> rusqlite::Result<Result<PairingCode, StoreError>> {
    let id: String = row.get(0)?;
    let role: String = row.get(2)?;
    let state: String = row.get(7)?;
    let (created_at, expires_at): (i64, i64) = (row.get(3)?, row.get(4)?);
    let (max_attempts, attempts_left): (u32, u32) = (row.get(5)?, row.get(6)?);
    let sealed_pin: Option<Vec<u8>> = row.get(1)?;
    Ok((|| {
        Ok(PairingCode {
            code_id: CodeId::parse(&id).map_err(StoreError::corrupt)?,
            sealed_pin,
            role: role.parse::<Role>().map_err(StoreError::corrupt)?,
            created_at: from_millis(created_at),
            expires_at: from_millis(expires_at),
            max_attempts,
            attempts_left,
            state: CodeState::parse(&state)
                .ok_or_else(|| StoreError::corrupt(format!("code {id}: state {state:?}")))?,
        })
    })())
}

fn load_key(c: &Connection, key_id: &str) -> Result<Option<EnrollmentKey>, StoreError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM enrollment_keys WHERE key_id = ?1");
    c.prepare_cached(&sql)?.query_row([key_id], key_from_row).optional()?.transpose()
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<Result<EnrollmentKey, StoreError>> {
    let id: String = row.get(0)?;
    let role: String = row.get(1)?;
    let scopes: String = row.get(2)?;
    let (max_uses, uses): (u32, u32) = (row.get(3)?, row.get(4)?);
    let (created_at, expires_at, revoked_at): (i64, i64, Option<i64>) = (row.get(5)?, row.get(6)?, row.get(7)?);
    let sealed_secret: Option<Vec<u8>> = row.get(8)?;
    Ok((|| {
        Ok(EnrollmentKey {
            key_id: CodeId::parse(&id).map_err(StoreError::corrupt)?,
            grants: Grants {
                role: role.parse::<Role>().map_err(StoreError::corrupt)?,
                scopes: parse_scopes(&scopes).map_err(StoreError::corrupt)?,
                max_uses,
                created_at: from_millis(created_at),
                expires_at: from_millis(expires_at),
            },
            uses,
            revoked_at: revoked_at.map(from_millis),
            sealed_secret,
        })
    })())
}

fn insert_request(c: &Connection, r: &PairingRequest) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO pairing_requests ({REQUEST_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
    );
    c.prepare_cached(&sql)?.execute(params![
        r.id,
        r.code_id,
        r.device_name,
        r.fingerprint,
        r.signing_public_key.as_slice(),
        r.agreement_public_key.as_slice(),
        r.csr_pem,
        r.role.as_str(),
        r.state.as_str(),
        to_millis(r.created_at),
        to_millis(r.expires_at),
        r.decided_at.map(to_millis),
        r.peer_address,
        r.device_id.map(|d| d.to_string()),
        r.certificate_pem,
        r.reject_reason,
        scopes_json(&r.scopes)?,
    ])?;
    Ok(())
}

fn load_request(c: &Connection, id: &str) -> Result<Option<PairingRequest>, StoreError> {
    // Ids are lower case; requests stored before that are upper case.
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM pairing_requests WHERE id IN (?1, upper(?1))");
    c.prepare_cached(&sql)?.query_row([id], request_from_row).optional()?.transpose()
}

fn request_from_row(row: &Row<'_>) -> rusqlite::Result<Result<PairingRequest, StoreError>> {
    let id: String = row.get(0)?;
    let signing: Vec<u8> = row.get(4)?;
    let agreement: Vec<u8> = row.get(5)?;
    let role: String = row.get(7)?;
    let state: String = row.get(8)?;
    let decided_at: Option<i64> = row.get(11)?;
    let device_id: Option<String> = row.get(13)?;
    let scopes: String = row.get(16)?;
    let (created_at, expires_at): (i64, i64) = (row.get(9)?, row.get(10)?);
    let (code_id, device_name, fingerprint, csr_pem): (String, String, String, String) =
        (row.get(1)?, row.get(2)?, row.get(3)?, row.get(6)?);
    let (peer_address, certificate_pem, reject_reason): (String, Option<String>, String) =
        (row.get(12)?, row.get(14)?, row.get(15)?);
    let key = |bytes: &[u8], what: &str| -> Result<[u8; 32], StoreError> {
        bytes.try_into().map_err(|_| StoreError::corrupt(format!("pairing request {id}: {what}")))
    };
    Ok((|| {
        Ok(PairingRequest {
            signing_public_key: key(&signing, "signing key")?,
            agreement_public_key: key(&agreement, "agreement key")?,
            role: role.parse::<Role>().map_err(StoreError::corrupt)?,
            state: RequestState::parse(&state)
                .ok_or_else(|| StoreError::corrupt(format!("pairing request {id}: state {state:?}")))?,
            created_at: from_millis(created_at),
            expires_at: from_millis(expires_at),
            decided_at: decided_at.map(from_millis),
            device_id: device_id.as_deref().map(DeviceId::parse).transpose().map_err(StoreError::corrupt)?,
            scopes: parse_scopes(&scopes).map_err(StoreError::corrupt)?,
            id: id.clone(),
            code_id,
            device_name,
            fingerprint,
            csr_pem,
            peer_address,
            certificate_pem,
            reject_reason,
        })
    })())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::identity::{DeviceIdentity, DeviceStatus};

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db")).unwrap();
        (dir, store)
    }

    fn code(attempts: u32) -> PairingCode {
        PairingCode {
            code_id: CodeId::generate().unwrap(),
            sealed_pin: Some(vec![9; 34]),
            role: Role::Device,
            created_at: t0(),
            expires_at: t0() + Duration::from_secs(600),
            max_attempts: attempts,
            attempts_left: attempts,
            state: CodeState::Active,
        }
    }

    fn request(code: &PairingCode, identity: &DeviceIdentity) -> PairingRequest {
        PairingRequest {
            id: ulid::Ulid::generate().to_string(),
            code_id: code.code_id.to_string(),
            device_name: "phone".into(),
            fingerprint: identity.fingerprint(),
            signing_public_key: identity.signing_public_key(),
            agreement_public_key: identity.agreement_public_key(),
            csr_pem: "csr".into(),
            role: Role::Device,
            state: RequestState::Pending,
            created_at: t0(),
            expires_at: t0() + crate::pairing::REQUEST_TTL,
            decided_at: None,
            peer_address: "127.0.0.1:5000".into(),
            device_id: None,
            certificate_pem: None,
            reject_reason: String::new(),
            scopes: Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_starts_never_spend_more_than_the_attempts() {
        let (_dir, store) = open();
        let c = code(5);
        store.insert_code(&c).await.unwrap();
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let (store, id) = (store.clone(), c.code_id.clone());
                tokio::spawn(async move { store.take_attempt(&id, t0()).await.unwrap().is_ok() })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        assert_eq!(admitted, 5);
        let stored = store.pairing_code(&c.code_id).await.unwrap().unwrap();
        assert_eq!((stored.state, stored.sealed_pin, stored.attempts_left), (CodeState::Burned, None, 0));
        let unknown = CodeId::parse("0000000000").unwrap();
        assert_eq!(store.take_attempt(&unknown, t0()).await.unwrap(), Err(PairingError::CodeInvalid));
    }

    #[tokio::test]
    async fn finishing_consumes_the_code_and_expiry_erases_pins() {
        let (_dir, store) = open();
        let (used, old) = (code(5), code(5));
        store.insert_code(&used).await.unwrap();
        store.insert_code(&old).await.unwrap();
        let identity = DeviceIdentity::generate().unwrap();
        let r = request(&used, &identity);
        store.finish(&r).await.unwrap().unwrap();
        assert_eq!(store.finish(&request(&used, &identity)).await.unwrap(), Err(PairingError::CodeInvalid));
        let stored = store.pairing_code(&used.code_id).await.unwrap().unwrap();
        assert_eq!((stored.state, stored.sealed_pin), (CodeState::Used, None));
        assert_eq!(store.request(&r.id).await.unwrap(), Some(r.clone()));
        // Stored upper case (as before ids were lower case): found by the lower-case id too.
        assert_eq!(store.request(&r.id.to_ascii_lowercase()).await.unwrap(), Some(r.clone()));

        store.expire(t0() + Duration::from_secs(600)).await.unwrap();
        let expired = store.pairing_code(&old.code_id).await.unwrap().unwrap();
        assert_eq!((expired.state, expired.sealed_pin), (CodeState::Expired, None));
        // Pending requests expire after 24 hours, and cannot be decided then.
        let late = t0() + crate::pairing::REQUEST_TTL;
        let pending = store.requests(Some(RequestState::Pending), late).await.unwrap();
        assert!(pending.is_empty());
        assert_eq!(store.requests(Some(RequestState::Expired), late).await.unwrap().len(), 1);
        assert!(matches!(
            store.reject(&r.id, "", late).await.unwrap(),
            Err(PairingError::RequestNotPending { state: "expired", .. })
        ));
        assert_eq!(store.request(&r.id).await.unwrap().unwrap().state, RequestState::Expired);
    }

    #[tokio::test]
    async fn approval_registers_the_device_and_keeps_the_certificate() {
        let (_dir, store) = open();
        let c = code(5);
        store.insert_code(&c).await.unwrap();
        let identity = DeviceIdentity::generate().unwrap();
        let r = request(&c, &identity);
        store.finish(&r).await.unwrap().unwrap();
        let device = Device {
            id: DeviceId::generate(),
            name: "phone".into(),
            fingerprint: identity.fingerprint(),
            signing_public_key: identity.signing_public_key(),
            role: Role::Node,
            status: DeviceStatus::Active,
            paired_at: t0(),
            certificate_expires_at: t0() + Duration::from_secs(86_400),
            revoked_at: None,
            revoke_reason: None,
            scopes: vec![crate::vault::Scope::parse("agents/alpha").unwrap()],
        };
        let approved = store.approve(&r.id, &device, "CERT", t0()).await.unwrap().unwrap();
        assert_eq!(approved.state, RequestState::Approved);
        assert_eq!(
            (approved.device_id, approved.certificate_pem.as_deref()),
            (Some(device.id), Some("CERT"))
        );
        assert_eq!((approved.role, approved.scopes.clone()), (Role::Node, device.scopes.clone()));
        assert_eq!(store.device(device.id).await.unwrap(), Some(device.clone()));
        assert!(matches!(
            store.approve(&r.id, &device, "CERT", t0()).await.unwrap(),
            Err(PairingError::RequestNotPending { state: "approved", .. })
        ));
        assert!(matches!(
            store.reject("01ARZ3NDEKTSV4RRFFQ69G5FAV", "", t0()).await.unwrap(),
            Err(PairingError::RequestNotFound(_))
        ));
    }
}
