//! The registry of paired devices: the `devices` table behind methods that speak
//! [`crate::identity`] types. Decides nothing about who may pair or connect; it records.

use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Store, StoreError, events, from_millis, to_millis};
use crate::devices::DeviceStore;
use crate::events::{DEVICE_RENEWED, DEVICE_REVOKED, NewEvent};
use crate::identity::{Device, DeviceId, DeviceStatus, IdentityError, Role};
use crate::integrity::{Field, RowMac, Table};
use crate::store_error::BoxFuture;
use crate::vault::Scope;

/// Columns of `devices`, in the order [`device_from_row`] reads them.
const COLUMNS: &str = "id, name, fingerprint, signing_public_key, role, status, paired_at, \
                       certificate_expires_at, revoked_at, revoke_reason, scopes";
/// [`COLUMNS`] and the row's MAC (`crate::integrity`), which covers every one of them: the
/// peer resolver trusts id, fingerprint, role, status and scopes; renewal trusts the signing
/// key; the approver reads the name.
const COLUMNS_MAC: &str = "id, name, fingerprint, signing_public_key, role, status, paired_at, \
                       certificate_expires_at, revoked_at, revoke_reason, scopes, mac";

/// The peer resolver's registry read (`crate::access`).
impl crate::access::DeviceLookup for Store {
    fn device(
        &self,
        id: DeviceId,
    ) -> crate::store_error::BoxFuture<'_, Result<Option<Device>, IdentityError>> {
        Box::pin(Store::device(self, id))
    }
}

impl Store {
    /// Registers `device`. [`IdentityError::AlreadyExists`] if its id or fingerprint is taken
    /// (a revoked device's key cannot come back under a new id).
    pub async fn insert_device(&self, device: &Device) -> Result<(), IdentityError> {
        let device = device.clone();
        let mac = self.row_mac();
        self.write(move |c| {
            let mac = mac.as_deref();
            if load(c, "id", &device.id.to_string(), mac)?.is_some() {
                return Err(IdentityError::AlreadyExists(format!("device {}", device.id)));
            }
            if load(c, "fingerprint", &device.fingerprint, mac)?.is_some() {
                return Err(IdentityError::AlreadyExists(format!(
                    "a device with fingerprint {}",
                    device.fingerprint
                )));
            }
            insert(c, &device, mac)?;
            Ok(())
        })
        .await
    }

    /// The device `id`, if registered.
    pub async fn device(&self, id: DeviceId) -> Result<Option<Device>, IdentityError> {
        let mac = self.row_mac();
        self.read(move |c| Ok(load(c, "id", &id.to_string(), mac.as_deref())?)).await
    }

    /// The device whose signing key has this fingerprint, if registered.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub async fn device_by_fingerprint(&self, fingerprint: &str) -> Result<Option<Device>, IdentityError> {
        let fingerprint = fingerprint.to_owned();
        let mac = self.row_mac();
        self.read(move |c| Ok(load(c, "fingerprint", &fingerprint, mac.as_deref())?)).await
    }

    /// Every registered device, revoked ones included, oldest pairing first.
    pub async fn devices(&self) -> Result<Vec<Device>, IdentityError> {
        let mac = self.row_mac();
        self.read(move |c| Ok(list(c, mac.as_deref())?)).await
    }

    /// Revokes device `id` and returns it. Revoking a revoked device changes nothing (the
    /// first revocation's time and reason stay). [`IdentityError::NotFound`] if unknown.
    pub async fn revoke_device(
        &self,
        id: DeviceId,
        reason: &str,
        now: SystemTime,
    ) -> Result<Device, IdentityError> {
        let reason = reason.to_owned();
        let mac = self.row_mac();
        self.write(move |c| {
            let mac = mac.as_deref();
            let device = load(c, "id", &id.to_string(), mac)?.ok_or(IdentityError::NotFound(id))?;
            if device.status == DeviceStatus::Revoked {
                return Ok(device);
            }
            update(
                c,
                "UPDATE devices SET status = 'revoked', revoked_at = ?2, revoke_reason = ?3 WHERE id = ?1",
                params![id.to_string(), to_millis(now), reason],
            )?;
            remac(c, id, mac)?;
            events::append(
                c,
                &NewEvent::new(DEVICE_REVOKED, id.to_string())
                    .with("device_id", id)
                    .with("role", device.role.as_str()),
                now,
            )?;
            load(c, "id", &id.to_string(), mac)?.ok_or(IdentityError::NotFound(id))
        })
        .await
    }

    /// Records the expiry of the certificate just issued to device `id` (pairing, renewal).
    pub async fn set_certificate_expiry(
        &self,
        id: DeviceId,
        expires_at: SystemTime,
    ) -> Result<(), IdentityError> {
        let mac = self.row_mac();
        self.write(move |c| {
            let mac = mac.as_deref();
            // Checked before it is changed: a forged row is never re-MAC'd as if sound.
            load(c, "id", &id.to_string(), mac)?.ok_or(IdentityError::NotFound(id))?;
            update(
                c,
                "UPDATE devices SET certificate_expires_at = ?2 WHERE id = ?1",
                params![id.to_string(), to_millis(expires_at)],
            )?;
            remac(c, id, mac)?;
            events::append(
                c,
                &NewEvent::new(DEVICE_RENEWED, id.to_string())
                    .with("device_id", id)
                    .with("expires_at_unix_ms", to_millis(expires_at)),
                SystemTime::now(),
            )?;
            Ok(())
        })
        .await
    }

    /// Replaces the vault scopes granted to device `id` beyond its own.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub async fn set_device_scopes(&self, id: DeviceId, scopes: Vec<Scope>) -> Result<(), IdentityError> {
        let mac = self.row_mac();
        self.write(move |c| {
            let mac = mac.as_deref();
            load(c, "id", &id.to_string(), mac)?.ok_or(IdentityError::NotFound(id))?;
            update(
                c,
                "UPDATE devices SET scopes = ?2 WHERE id = ?1",
                params![id.to_string(), scopes_json(&scopes)?],
            )?;
            remac(c, id, mac)?;
            Ok(())
        })
        .await
    }
}

/// The registry's store trait: each method is the inherent one above (which tests call
/// directly on `Store`).
impl DeviceStore for Store {
    fn insert(&self, device: Device) -> BoxFuture<'_, Result<(), IdentityError>> {
        Box::pin(async move { Store::insert_device(self, &device).await })
    }

    fn get(&self, id: DeviceId) -> BoxFuture<'_, Result<Option<Device>, IdentityError>> {
        Box::pin(Store::device(self, id))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Device>, IdentityError>> {
        Box::pin(Store::devices(self))
    }

    fn revoke(
        &self,
        id: DeviceId,
        reason: String,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Device, IdentityError>> {
        Box::pin(async move { Store::revoke_device(self, id, &reason, now).await })
    }

    fn set_certificate_expiry(
        &self,
        id: DeviceId,
        expires_at: SystemTime,
    ) -> BoxFuture<'_, Result<(), IdentityError>> {
        Box::pin(Store::set_certificate_expiry(self, id, expires_at))
    }
}

pub(super) fn insert(conn: &Connection, device: &Device, mac: Option<&RowMac>) -> Result<(), StoreError> {
    let sql =
        format!("INSERT INTO devices ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
    conn.prepare_cached(&sql)?.execute(params![
        device.id.to_string(),
        device.name,
        device.fingerprint,
        device.signing_public_key.as_slice(),
        device.role.as_str(),
        status_str(device.status),
        to_millis(device.paired_at),
        to_millis(device.certificate_expires_at),
        device.revoked_at.map(to_millis),
        device.revoke_reason,
        scopes_json(&device.scopes)?,
    ])?;
    remac(conn, device.id, mac)
}

/// The raw columns of a `devices` row, as stored, in [`COLUMNS`] order.
type RawDevice =
    (String, String, String, Vec<u8>, String, String, i64, i64, Option<i64>, Option<String>, String);

fn raw_from_row(row: &Row<'_>) -> rusqlite::Result<RawDevice> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
    ))
}

fn device_tag(mac: &RowMac, raw: &RawDevice) -> [u8; crate::integrity::MAC_LEN] {
    let fields = [
        Field::Text(&raw.0),
        Field::Text(&raw.1),
        Field::Text(&raw.2),
        Field::Bytes(&raw.3),
        Field::Text(&raw.4),
        Field::Text(&raw.5),
        Field::Int(raw.6),
        Field::Int(raw.7),
        Field::OptInt(raw.8),
        Field::OptText(raw.9.as_deref()),
        Field::Text(&raw.10),
    ];
    mac.tag(Table::Devices, &fields)
}

/// Stores the MAC of device `id`'s row as it is now (after a write that checked it first).
fn remac(conn: &Connection, id: DeviceId, mac: Option<&RowMac>) -> Result<(), StoreError> {
    let Some(mac) = mac else { return Ok(()) };
    let sql = format!("SELECT {COLUMNS} FROM devices WHERE id = ?1");
    let raw = conn.prepare_cached(&sql)?.query_row([id.to_string()], raw_from_row)?;
    conn.prepare_cached("UPDATE devices SET mac = ?2 WHERE id = ?1")?
        .execute(params![id.to_string(), device_tag(mac, &raw).as_slice()])?;
    Ok(())
}

/// MACs every `devices` row that has none (the one-time backfill of migration 0009).
pub(super) fn backfill_macs(conn: &Connection, mac: &RowMac) -> Result<u64, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM devices WHERE mac IS NULL");
    let rows = conn.prepare_cached(&sql)?.query_map([], raw_from_row)?.collect::<Result<Vec<_>, _>>()?;
    let mut update = conn.prepare_cached("UPDATE devices SET mac = ?2 WHERE id = ?1")?;
    for raw in &rows {
        update.execute(params![raw.0, device_tag(mac, raw).as_slice()])?;
    }
    Ok(rows.len() as u64)
}

/// Reads a row in [`COLUMNS_MAC`] order, checking its MAC when there is a key.
fn checked_from_row(row: &Row<'_>, mac: Option<&RowMac>) -> rusqlite::Result<Result<Device, StoreError>> {
    if let Some(mac) = mac {
        let raw = raw_from_row(row)?;
        let stored: Option<Vec<u8>> = row.get(11)?;
        let expected = device_tag(mac, &raw);
        let sound = stored.as_deref().is_some_and(|s| {
            s.len() == expected.len() && bool::from(subtle::ConstantTimeEq::ct_eq(s, expected.as_slice()))
        });
        if !sound {
            let what = if stored.is_none() { "has no row mac" } else { "does not match its row mac" };
            return Ok(Err(StoreError::integrity(format_args!(
                "device {}: its registry row (role, status, keys, scopes) {what}",
                raw.0
            ))));
        }
    }
    device_from_row(row)
}

fn list(conn: &Connection, mac: Option<&RowMac>) -> Result<Vec<Device>, StoreError> {
    let sql = format!("SELECT {COLUMNS_MAC} FROM devices ORDER BY paired_at, id");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], |r| checked_from_row(r, mac))?;
    let mut devices = Vec::new();
    for row in rows {
        devices.push(row??);
    }
    Ok(devices)
}

/// Runs an UPDATE and returns how many rows it changed.
fn update(conn: &Connection, sql: &'static str, params: impl rusqlite::Params) -> Result<usize, StoreError> {
    Ok(conn.prepare_cached(sql)?.execute(params)?)
}

/// The device whose `column` (`id` or `fingerprint`, both unique) equals `value`.
pub(super) fn load(
    conn: &Connection,
    column: &'static str,
    value: &str,
    mac: Option<&RowMac>,
) -> Result<Option<Device>, StoreError> {
    let sql = format!("SELECT {COLUMNS_MAC} FROM devices WHERE {column} = ?1");
    conn.prepare_cached(&sql)?.query_row([value], |r| checked_from_row(r, mac)).optional()?.transpose()
}

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Device, StoreError>> {
    let id: String = row.get(0)?;
    let key: Vec<u8> = row.get(3)?;
    let role: String = row.get(4)?;
    let status: String = row.get(5)?;
    let scopes: String = row.get(10)?;
    let revoked_at: Option<i64> = row.get(8)?;
    let parsed = (|| {
        Ok(Device {
            id: DeviceId::parse(&id).map_err(StoreError::corrupt)?,
            name: row.get(1)?,
            fingerprint: row.get(2)?,
            signing_public_key: key.as_slice().try_into().map_err(|_| {
                StoreError::corrupt(format!("device {id}: signing key of {} bytes", key.len()))
            })?,
            role: role.parse::<Role>().map_err(StoreError::corrupt)?,
            status: match status.as_str() {
                "active" => DeviceStatus::Active,
                "revoked" => DeviceStatus::Revoked,
                other => return Err(StoreError::corrupt(format!("device {id}: status {other:?}"))),
            },
            paired_at: from_millis(row.get(6)?),
            certificate_expires_at: from_millis(row.get(7)?),
            revoked_at: revoked_at.map(from_millis),
            revoke_reason: row.get(9)?,
            scopes: parse_scopes(&scopes).map_err(|e| StoreError::corrupt(format!("device {id}: {e}")))?,
        })
    })();
    Ok(parsed)
}

fn status_str(status: DeviceStatus) -> &'static str {
    match status {
        DeviceStatus::Active => "active",
        DeviceStatus::Revoked => "revoked",
    }
}

pub(super) fn scopes_json(scopes: &[Scope]) -> Result<String, StoreError> {
    let texts: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
    serde_json::to_string(&texts).map_err(StoreError::new)
}

pub(super) fn parse_scopes(json: &str) -> Result<Vec<Scope>, String> {
    let texts: Vec<String> = serde_json::from_str(json).map_err(|e| format!("scopes: {e}"))?;
    texts.iter().map(|t| Scope::parse(t).map_err(|e| e.to_string())).collect()
}

#[cfg(test)]
#[allow(clippy::expect_used, reason = "test setup fails loudly")]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::identity::DeviceIdentity;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn device(name: &str, role: Role) -> Device {
        let identity = DeviceIdentity::generate().expect("identity");
        Device {
            id: identity.id(),
            name: name.to_owned(),
            fingerprint: identity.fingerprint(),
            signing_public_key: identity.signing_public_key(),
            role,
            status: DeviceStatus::Active,
            paired_at: at(1_700_000_000_000),
            certificate_expires_at: at(1_702_592_000_000),
            revoked_at: None,
            revoke_reason: None,
            scopes: vec![Scope::parse("agents/alpha").expect("scope")],
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("p.db")).expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn insert_get_list_and_lookup_by_fingerprint() -> Result<(), IdentityError> {
        let (_dir, store) = open();
        let mut operator = device("operator", Role::Admin);
        operator.scopes.clear();
        let mut phone = device("phone", Role::Device);
        phone.paired_at = at(1_700_000_000_001);
        store.insert_device(&phone).await?;
        store.insert_device(&operator).await?;

        assert_eq!(store.device(phone.id).await?, Some(phone.clone()));
        assert_eq!(store.device_by_fingerprint(&operator.fingerprint).await?, Some(operator.clone()));
        assert_eq!(store.device(DeviceId::generate()).await?, None);
        assert_eq!(store.device_by_fingerprint("00").await?, None);
        assert_eq!(store.devices().await?, vec![operator.clone(), phone.clone()]);

        let mut same_id = device("other", Role::Device);
        same_id.id = phone.id;
        assert!(matches!(store.insert_device(&same_id).await, Err(IdentityError::AlreadyExists(_))));
        let mut same_key = device("other", Role::Device);
        same_key.fingerprint = phone.fingerprint.clone();
        let err = store.insert_device(&same_key).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("fingerprint") && err.contains("already exists"), "{err}");
        assert_eq!(store.devices().await?.len(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn revoke_expiry_and_scopes() -> Result<(), IdentityError> {
        let (_dir, store) = open();
        let phone = device("phone", Role::Device);
        store.insert_device(&phone).await?;

        let revoked = store.revoke_device(phone.id, "lost", at(1_700_000_100_000)).await?;
        assert_eq!(revoked.status, DeviceStatus::Revoked);
        assert_eq!(revoked.revoked_at, Some(at(1_700_000_100_000)));
        assert_eq!(revoked.revoke_reason.as_deref(), Some("lost"));
        assert_eq!(store.device(phone.id).await?, Some(revoked.clone()));
        // A second revocation keeps the first one's record.
        assert_eq!(store.revoke_device(phone.id, "again", at(1_800_000_000_000)).await?, revoked);

        let unknown = DeviceId::generate();
        assert!(matches!(
            store.revoke_device(unknown, "x", at(0)).await,
            Err(IdentityError::NotFound(id)) if id == unknown
        ));
        assert!(matches!(
            store.set_certificate_expiry(unknown, at(0)).await,
            Err(IdentityError::NotFound(_))
        ));
        assert!(matches!(store.set_device_scopes(unknown, vec![]).await, Err(IdentityError::NotFound(_))));

        store.set_certificate_expiry(phone.id, at(1_710_000_000_000)).await?;
        let scopes =
            vec![Scope::parse("connectors/slack").expect("scope"), Scope::parse("a/b").expect("scope")];
        store.set_device_scopes(phone.id, scopes.clone()).await?;
        let stored = store.device(phone.id).await?.expect("device");
        assert_eq!(stored.certificate_expires_at, at(1_710_000_000_000));
        assert_eq!(stored.scopes, scopes);
        Ok(())
    }

    #[tokio::test]
    async fn a_corrupt_row_is_an_error_not_a_device() -> Result<(), IdentityError> {
        let (dir, store) = open();
        let phone = device("phone", Role::Device);
        store.insert_device(&phone).await?;
        // Play the attacker with write access to the database file.
        let raw = rusqlite::Connection::open(dir.path().join("p.db")).map_err(StoreError::from)?;
        raw.execute("UPDATE devices SET scopes = '[\"../x\"]'", []).map_err(StoreError::from)?;
        let err = store.device(phone.id).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("corrupt row"), "{err}");
        Ok(())
    }
}
