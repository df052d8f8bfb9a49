//! Row MACs: the rows of the database that decide what the node serves or allows carry an
//! HMAC-SHA256 under a purpose key derived from the root key ([`KeyHierarchy::row_mac_key`]).
//!
//! Someone who can write `palyra.db` but cannot read the root key cannot forge one, so editing
//! a secret's latest version or deleted flag, a device's role or status, or a policy version's
//! text is detected when the row is read (an integrity error, never the edited value). What a
//! MAC cannot catch is a row put back to a state it had before (an older copy of the row, or
//! of the whole database); `storage` adds the cross-row checks it can (a secret's latest
//! version below a stored version), the rest is the documented rollback limit.
//!
//! This module knows the fields, not SQL: `storage` hands it the column values it read.

use std::fmt;

use ring::hmac;

use crate::vault::KeyHierarchy;

/// Length of a row MAC in bytes.
pub const MAC_LEN: usize = 32;

/// Which table a MAC belongs to; part of the MAC input, so a tag never fits another table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `secrets`: object id, scope, key, latest version, deleted flag, size.
    Secrets,
    /// `devices`: id, fingerprint, signing key, role, status, certificate expiry, revocation, scopes.
    Devices,
    /// `policy_versions`: version, text, updated_by.
    PolicyVersions,
}

impl Table {
    fn label(self) -> &'static [u8] {
        match self {
            Table::Secrets => b"secrets",
            Table::Devices => b"devices",
            Table::PolicyVersions => b"policy_versions",
        }
    }
}

/// One column value fed to a MAC.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    /// Text.
    Text(&'a str),
    /// Bytes.
    Bytes(&'a [u8]),
    /// An integer.
    Int(i64),
    /// An integer that may be NULL.
    OptInt(Option<i64>),
    /// Text that may be NULL.
    OptText(Option<&'a str>),
}

/// The row-MAC key. `Debug` never shows it.
pub struct RowMac {
    key: hmac::Key,
}

impl fmt::Debug for RowMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RowMac([redacted])")
    }
}

impl RowMac {
    /// The row-MAC key of a node.
    pub fn new(keys: &KeyHierarchy) -> Self {
        RowMac { key: keys.row_mac_key() }
    }

    /// The MAC of a row of `table` with these column values. Each field is tagged and length
    /// prefixed, so no two different rows encode to the same input.
    pub fn tag(&self, table: Table, fields: &[Field<'_>]) -> [u8; MAC_LEN] {
        let mut mac = MacInput::new(&self.key);
        mac.put(b"palyra.row-mac.v1\0");
        put_bytes(&mut mac, 0, table.label());
        for field in fields {
            match *field {
                Field::Text(t) => put_bytes(&mut mac, 1, t.as_bytes()),
                Field::Bytes(b) => put_bytes(&mut mac, 2, b),
                Field::Int(i) => put_bytes(&mut mac, 3, &i.to_be_bytes()),
                Field::OptInt(None) | Field::OptText(None) => put_bytes(&mut mac, 4, &[]),
                Field::OptInt(Some(i)) => put_bytes(&mut mac, 3, &i.to_be_bytes()),
                Field::OptText(Some(t)) => put_bytes(&mut mac, 1, t.as_bytes()),
            }
        }
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(mac.sign().as_ref());
        out
    }

    /// Checks a stored MAC (constant time). `None` (a row without a MAC) never verifies.
    pub fn verify(&self, table: Table, fields: &[Field<'_>], stored: Option<&[u8]>) -> bool {
        let Some(stored) = stored else { return false };
        let expected = self.tag(table, fields);
        stored.len() == MAC_LEN && bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_slice(), stored))
    }
}

fn put_bytes(mac: &mut MacInput, kind: u8, bytes: &[u8]) {
    mac.put(&[kind]);
    mac.put(&(bytes.len() as u64).to_be_bytes());
    mac.put(bytes);
}

/// An HMAC whose input comes in many short pieces (row MACs, the audit chain), gathered in a
/// buffer and handed to ring a block-sized batch at a time: ring's cost per `update` call
/// outweighed the hashing itself for inputs of a few hundred bytes in a dozen or more pieces.
/// The MAC is that of the concatenated pieces, exactly as with one `update` per piece.
pub(crate) struct MacInput {
    ctx: hmac::Context,
    buf: [u8; 256],
    len: usize,
}

impl MacInput {
    /// An empty input under `key`.
    pub(crate) fn new(key: &hmac::Key) -> Self {
        MacInput { ctx: hmac::Context::with_key(key), buf: [0; 256], len: 0 }
    }

    /// Appends `bytes`.
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        if bytes.len() > self.buf.len() - self.len {
            self.flush();
            if bytes.len() > self.buf.len() {
                self.ctx.update(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn flush(&mut self) {
        self.ctx.update(&self.buf[..self.len]);
        self.len = 0;
    }

    /// The MAC of everything put.
    pub(crate) fn sign(mut self) -> hmac::Tag {
        self.flush();
        self.ctx.sign()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::RootKey;

    #[test]
    fn gathered_input_macs_like_one_update_per_piece() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        // Short pieces, a piece that fills the buffer exactly, one longer than the buffer.
        let long = vec![7u8; 600];
        let exact = vec![9u8; 256];
        let cases: [&[&[u8]]; 4] = [&[], &[b"a", b"", b"bc"], &[b"x", &exact, b"y"], &[b"head", &long, b"tail", &exact]];
        for pieces in cases {
            let mut one_by_one = hmac::Context::with_key(&key);
            let mut gathered = MacInput::new(&key);
            for piece in pieces {
                one_by_one.update(piece);
                gathered.put(piece);
            }
            assert_eq!(one_by_one.sign().as_ref(), gathered.sign().as_ref());
        }
    }

    #[test]
    fn tags_bind_table_fields_and_key() {
        let mac = RowMac::new(&KeyHierarchy::new(&RootKey::from_bytes([7; 32])));
        let other = RowMac::new(&KeyHierarchy::new(&RootKey::from_bytes([8; 32])));
        let row = [Field::Text("id"), Field::Int(3), Field::Int(0)];
        let tag = mac.tag(Table::Secrets, &row);
        assert!(mac.verify(Table::Secrets, &row, Some(&tag)));
        assert!(!mac.verify(Table::Devices, &row, Some(&tag)));
        assert!(!mac.verify(Table::Secrets, &[Field::Text("id"), Field::Int(2), Field::Int(0)], Some(&tag)));
        assert!(!mac.verify(Table::Secrets, &[Field::Text("id"), Field::Int(3), Field::Int(1)], Some(&tag)));
        assert!(!other.verify(Table::Secrets, &row, Some(&tag)));
        assert!(!mac.verify(Table::Secrets, &row, None));
        assert!(!mac.verify(Table::Secrets, &row, Some(&tag[..31])));
        // Field boundaries are part of the input.
        assert_ne!(
            mac.tag(Table::Secrets, &[Field::Text("ab"), Field::Text("c")]),
            mac.tag(Table::Secrets, &[Field::Text("a"), Field::Text("bc")])
        );
        assert_ne!(
            mac.tag(Table::Secrets, &[Field::OptText(None)]),
            mac.tag(Table::Secrets, &[Field::OptText(Some(""))])
        );
        assert!(format!("{mac:?}").contains("redacted"));
    }
}
