//! Pairing codes, handshake sessions and requests (`pairing_codes`, `pairing_sessions`,
//! `pairing_requests`) as `Store` methods speaking [`crate::pairing`] types. The rules
//! (attempts, expiry, single use) are the domain's ([`PairingCode::take_attempt`] and
//! friends); here they run inside one write transaction so concurrent starts cannot spend the
//! same attempt twice and concurrent finishes cannot take the same session twice. Never sees a
//! PIN or a session's state in the clear (both arrive sealed).

use super::events;
use crate::events::{NewEvent, PAIRING_APPROVED, PAIRING_REJECTED, PAIRING_REQUESTED};
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::devices::{self, parse_scopes, scopes_json};
use super::{StorageError, Store, from_millis, to_millis};
use crate::identity::{Device, DeviceId, IdentityError, Role};
use crate::pairing::{CodeId, CodeState, PairingCode, PairingError, PairingRequest, RequestState};

const CODE_COLUMNS: &str =
    "code_id, sealed_pin, role, created_at, expires_at, max_attempts, attempts_left, state";
const REQUEST_COLUMNS: &str = "id, code_id, device_name, fingerprint, signing_public_key, \
     agreement_public_key, csr_pem, role, state, created_at, expires_at, decided_at, peer_address, \
     device_id, certificate_pem, reject_reason, scopes";
/// Most requests a listing returns.
const MAX_LISTED: i64 = 1000;

/// A domain outcome inside a storage result: the outer error is the database's, the inner
/// one the pairing rule that refused (whose state change, if any, is committed).
pub type Outcome<T> = Result<T, PairingError>;

impl Store {
    /// Stores a new code.
    pub async fn insert_pairing_code(&self, code: &PairingCode) -> Result<(), StorageError> {
        let code = code.clone();
        self.write(move |c| save_code(c, &code, true)).await
    }

    /// The code `code_id`, if any.
    pub async fn pairing_code(&self, code_id: &CodeId) -> Result<Option<PairingCode>, StorageError> {
        let id = code_id.as_str().to_owned();
        self.read(move |c| load_code(c, &id)).await
    }

    /// Spends one attempt of `code_id` for a StartPairing at `now` and returns the code (with
    /// its sealed PIN), or why it cannot be used. An expiry or burn found here is recorded.
    pub async fn take_pairing_attempt(
        &self,
        code_id: &CodeId,
        now: SystemTime,
    ) -> Result<Outcome<PairingCode>, StorageError> {
        let id = code_id.as_str().to_owned();
        self.write(move |c| {
            let Some(mut code) = load_code(c, &id)? else { return Ok(Err(PairingError::CodeInvalid)) };
            let taken = code.take_attempt(now);
            save_code(c, &code, false)?;
            Ok(taken.map(|()| code))
        })
        .await
    }

    /// After a failed FinishPairing: burns `code_id` if it has no attempts left. Returns
    /// whether it is burned, and its attempts left.
    pub async fn pairing_attempt_failed(&self, code_id: &CodeId) -> Result<(bool, u32), StorageError> {
        let id = code_id.as_str().to_owned();
        self.write(move |c| {
            let Some(mut code) = load_code(c, &id)? else { return Ok((true, 0)) };
            let burned = code.after_failure();
            save_code(c, &code, false)?;
            Ok((burned, code.attempts_left))
        })
        .await
    }

    /// After a successful FinishPairing: consumes the code and stores the PENDING request, in
    /// one transaction. Refused if the code is no longer active (used or burned meanwhile).
    pub async fn finish_pairing(&self, request: &PairingRequest) -> Result<Outcome<()>, StorageError> {
        let request = request.clone();
        self.write(move |c| {
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
        })
        .await
    }

    /// Stores a handshake session (its state sealed by the caller) until `expires_at`, and
    /// prunes sessions expired at `now`.
    pub async fn insert_pairing_session(
        &self,
        session_id: &str,
        sealed_state: Vec<u8>,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<(), StorageError> {
        let (id, expires_at, now) = (session_id.to_owned(), to_millis(expires_at), to_millis(now));
        self.write(move |c| {
            prune_sessions(c, now)?;
            c.prepare_cached(
                "INSERT INTO pairing_sessions (session_id, sealed_state, expires_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, sealed_state, expires_at])?;
            Ok::<_, StorageError>(())
        })
        .await
    }

    /// Takes session `session_id` out: deletes it and returns its sealed state if it was
    /// there and unexpired at `now`. One transaction on the single writer, so of concurrent
    /// takes at most one gets it; an expired session is deleted and not returned.
    pub async fn take_pairing_session(
        &self,
        session_id: &str,
        now: SystemTime,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let (id, now) = (session_id.to_owned(), to_millis(now));
        self.write(move |c| {
            let taken: Option<(Vec<u8>, i64)> = c
                .prepare_cached(
                    "DELETE FROM pairing_sessions WHERE session_id = ?1 RETURNING sealed_state, expires_at",
                )?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok::<_, StorageError>(taken.and_then(|(sealed, expires_at)| (expires_at > now).then_some(sealed)))
        })
        .await
    }

    /// The pairing request `id`, if any.
    pub async fn pairing_request(&self, id: &str) -> Result<Option<PairingRequest>, StorageError> {
        let id = id.to_owned();
        self.read(move |c| load_request(c, &id)).await
    }

    /// Pairing requests, newest first, optionally only those in `state` at `now`.
    pub async fn pairing_requests(
        &self,
        state: Option<RequestState>,
        now: SystemTime,
    ) -> Result<Vec<PairingRequest>, StorageError> {
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
                Ok::<_, StorageError>(out)
            })
            .await?;
        Ok(all.into_iter().filter(|r| state.is_none_or(|s| r.state_at(now) == s)).collect())
    }

    /// Records what time has decided: codes past their expiry lose their PIN, handshake
    /// sessions past theirs are deleted, pending requests past theirs become EXPIRED.
    pub async fn expire_pairing(&self, now: SystemTime) -> Result<(), StorageError> {
        let now = to_millis(now);
        self.write(move |c| {
            prune_sessions(c, now)?;
            c.prepare_cached(
                "UPDATE pairing_codes SET state = 'expired', sealed_pin = NULL \
                 WHERE state = 'active' AND expires_at <= ?1",
            )?
            .execute([now])?;
            c.prepare_cached(
                "UPDATE pairing_requests SET state = 'expired', decided_at = expires_at \
                 WHERE state = 'pending' AND expires_at <= ?1",
            )?
            .execute([now])?;
            Ok::<_, StorageError>(())
        })
        .await
    }

    /// Approves pending request `id`: registers `device` (ACTIVE, its role and scopes as
    /// approved) and records the device id, role, scopes and issued certificate on the request,
    /// in one transaction.
    pub async fn approve_pairing(
        &self,
        id: &str,
        device: &Device,
        certificate_pem: &str,
        now: SystemTime,
    ) -> Result<Outcome<PairingRequest>, IdentityError> {
        let (id, device, cert) = (id.to_owned(), device.clone(), certificate_pem.to_owned());
        let mac = self.row_mac();
        self.write(move |c| {
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
                 certificate_pem = ?4, role = ?5, scopes = ?6 WHERE id = ?1",
            )
            .map_err(StorageError::from)?
            .execute(params![
                id,
                to_millis(now),
                device.id.to_string(),
                cert,
                device.role.as_str(),
                scopes_json(&device.scopes)?
            ])
            .map_err(StorageError::from)?;
            let scopes: Vec<&str> = device.scopes.iter().map(|s| s.as_str()).collect();
            let event = NewEvent::new(PAIRING_APPROVED, id.clone())
                .with("device_id", device.id)
                .with("role", device.role.as_str())
                .with("scopes", scopes.join(","));
            events::append(c, &event, now)?;
            Ok(load_request(c, &id)?.ok_or(PairingError::RequestNotFound(id)))
        })
        .await
    }

    /// Rejects pending request `id` with `reason`.
    pub async fn reject_pairing(
        &self,
        id: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<Outcome<PairingRequest>, StorageError> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.write(move |c| {
            if let Err(e) = pending(c, &id, now)? {
                return Ok(Err(e));
            }
            c.prepare_cached(
                "UPDATE pairing_requests SET state = 'rejected', decided_at = ?2, reject_reason = ?3 \
                 WHERE id = ?1",
            )?
            .execute(params![id, to_millis(now), reason])?;
            events::append(c, &NewEvent::new(PAIRING_REJECTED, id.clone()), now)?;
            Ok(load_request(c, &id)?.ok_or(PairingError::RequestNotFound(id)))
        })
        .await
    }
}

/// Deletes handshake sessions expired at `now` (unix ms).
fn prune_sessions(c: &Connection, now: i64) -> Result<(), StorageError> {
    c.prepare_cached("DELETE FROM pairing_sessions WHERE expires_at <= ?1")?.execute([now])?;
    Ok(())
}

/// The request `id` if it is pending at `now`; an expiry found here is recorded.
fn pending(c: &Connection, id: &str, now: SystemTime) -> Result<Outcome<PairingRequest>, StorageError> {
    let Some(request) = load_request(c, id)? else {
        return Ok(Err(PairingError::RequestNotFound(id.to_owned())));
    };
    match request.state_at(now) {
        RequestState::Pending => Ok(Ok(request)),
        state => {
            if state != request.state {
                c.prepare_cached(
                    "UPDATE pairing_requests SET state = 'expired', decided_at = expires_at WHERE id = ?1",
                )?
                .execute([id])?;
            }
            Ok(Err(PairingError::RequestNotPending { id: id.to_owned(), state: state.as_str() }))
        }
    }
}

fn save_code(c: &Connection, code: &PairingCode, insert: bool) -> Result<(), StorageError> {
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

fn load_code(c: &Connection, code_id: &str) -> Result<Option<PairingCode>, StorageError> {
    let sql = format!("SELECT {CODE_COLUMNS} FROM pairing_codes WHERE code_id = ?1");
    c.prepare_cached(&sql)?.query_row([code_id], code_from_row).optional()?.transpose()
}

fn code_from_row(row: &Row<'_>) -> rusqlite::Result<Result<PairingCode, StorageError>> {
    let id: String = row.get(0)?;
    let role: String = row.get(2)?;
    let state: String = row.get(7)?;
    let (created_at, expires_at): (i64, i64) = (row.get(3)?, row.get(4)?);
    let (max_attempts, attempts_left): (u32, u32) = (row.get(5)?, row.get(6)?);
    let sealed_pin: Option<Vec<u8>> = row.get(1)?;
    Ok((|| {
        Ok(PairingCode {
            code_id: CodeId::parse(&id).map_err(StorageError::corrupt)?,
            sealed_pin,
            role: role.parse::<Role>().map_err(StorageError::corrupt)?,
            created_at: from_millis(created_at),
            expires_at: from_millis(expires_at),
            max_attempts,
            attempts_left,
            state: CodeState::parse(&state)
                .ok_or_else(|| StorageError::corrupt(format!("code {id}: state {state:?}")))?,
        })
    })())
}

fn insert_request(c: &Connection, r: &PairingRequest) -> Result<(), StorageError> {
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

fn load_request(c: &Connection, id: &str) -> Result<Option<PairingRequest>, StorageError> {
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM pairing_requests WHERE id = ?1");
    c.prepare_cached(&sql)?.query_row([id], request_from_row).optional()?.transpose()
}

fn request_from_row(row: &Row<'_>) -> rusqlite::Result<Result<PairingRequest, StorageError>> {
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
    let key = |bytes: &[u8], what: &str| -> Result<[u8; 32], StorageError> {
        bytes.try_into().map_err(|_| StorageError::corrupt(format!("pairing request {id}: {what}")))
    };
    Ok((|| {
        Ok(PairingRequest {
            signing_public_key: key(&signing, "signing key")?,
            agreement_public_key: key(&agreement, "agreement key")?,
            role: role.parse::<Role>().map_err(StorageError::corrupt)?,
            state: RequestState::parse(&state)
                .ok_or_else(|| StorageError::corrupt(format!("pairing request {id}: state {state:?}")))?,
            created_at: from_millis(created_at),
            expires_at: from_millis(expires_at),
            decided_at: decided_at.map(from_millis),
            device_id: device_id
                .as_deref()
                .map(DeviceId::parse)
                .transpose()
                .map_err(StorageError::corrupt)?,
            scopes: parse_scopes(&scopes).map_err(StorageError::corrupt)?,
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
        store.insert_pairing_code(&c).await.unwrap();
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let (store, id) = (store.clone(), c.code_id.clone());
                tokio::spawn(async move { store.take_pairing_attempt(&id, t0()).await.unwrap().is_ok() })
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
        assert_eq!(store.take_pairing_attempt(&unknown, t0()).await.unwrap(), Err(PairingError::CodeInvalid));
    }

    #[tokio::test]
    async fn finishing_consumes_the_code_and_expiry_erases_pins() {
        let (_dir, store) = open();
        let (used, old) = (code(5), code(5));
        store.insert_pairing_code(&used).await.unwrap();
        store.insert_pairing_code(&old).await.unwrap();
        let identity = DeviceIdentity::generate().unwrap();
        let r = request(&used, &identity);
        store.finish_pairing(&r).await.unwrap().unwrap();
        assert_eq!(
            store.finish_pairing(&request(&used, &identity)).await.unwrap(),
            Err(PairingError::CodeInvalid)
        );
        let stored = store.pairing_code(&used.code_id).await.unwrap().unwrap();
        assert_eq!((stored.state, stored.sealed_pin), (CodeState::Used, None));
        assert_eq!(store.pairing_request(&r.id).await.unwrap(), Some(r.clone()));

        store.expire_pairing(t0() + Duration::from_secs(600)).await.unwrap();
        let expired = store.pairing_code(&old.code_id).await.unwrap().unwrap();
        assert_eq!((expired.state, expired.sealed_pin), (CodeState::Expired, None));
        // Pending requests expire after 24 hours, and cannot be decided then.
        let late = t0() + crate::pairing::REQUEST_TTL;
        let pending = store.pairing_requests(Some(RequestState::Pending), late).await.unwrap();
        assert!(pending.is_empty());
        assert_eq!(store.pairing_requests(Some(RequestState::Expired), late).await.unwrap().len(), 1);
        assert!(matches!(
            store.reject_pairing(&r.id, "", late).await.unwrap(),
            Err(PairingError::RequestNotPending { state: "expired", .. })
        ));
        assert_eq!(store.pairing_request(&r.id).await.unwrap().unwrap().state, RequestState::Expired);
    }

    #[tokio::test]
    async fn approval_registers_the_device_and_keeps_the_certificate() {
        let (_dir, store) = open();
        let c = code(5);
        store.insert_pairing_code(&c).await.unwrap();
        let identity = DeviceIdentity::generate().unwrap();
        let r = request(&c, &identity);
        store.finish_pairing(&r).await.unwrap().unwrap();
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
        let approved = store.approve_pairing(&r.id, &device, "CERT", t0()).await.unwrap().unwrap();
        assert_eq!(approved.state, RequestState::Approved);
        assert_eq!(
            (approved.device_id, approved.certificate_pem.as_deref()),
            (Some(device.id), Some("CERT"))
        );
        assert_eq!((approved.role, approved.scopes.clone()), (Role::Node, device.scopes.clone()));
        assert_eq!(store.device(device.id).await.unwrap(), Some(device.clone()));
        assert!(matches!(
            store.approve_pairing(&r.id, &device, "CERT", t0()).await.unwrap(),
            Err(PairingError::RequestNotPending { state: "approved", .. })
        ));
        assert!(matches!(
            store.reject_pairing("01ARZ3NDEKTSV4RRFFQ69G5FAV", "", t0()).await.unwrap(),
            Err(PairingError::RequestNotFound(_))
        ));
    }
}
