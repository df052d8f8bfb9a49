//! Renewing a certificate after it expired: the table of outstanding renewal challenges with
//! its limits (per address, per device and address, in all), and the proof a device sends.
//!
//! A device whose certificate expired has nothing but its Ed25519 key: it asks for a fresh
//! challenge (anonymously), signs `identity::renewal_proof_message` over it and its CSR, and
//! renews. `super::Registry` runs the flow; this module only keeps the challenges. No clock
//! is read here (`now` is passed in), no wire type is named.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use super::RegistryError;
use crate::identity::DeviceId;
use crate::net_limits::address_key;
use crate::ratelimit::{AddressLimiter, Refused};

/// How long a renewal challenge may be used.
pub(crate) const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Most outstanding challenges; beyond this, new ones are refused until old ones expire.
/// Filling it takes [`MAX_CHALLENGES`] / ([`CHALLENGES_BURST_PER_PEER`] + one TTL of refill)
/// = 625 addresses (IPv6: /64s) at once.
const MAX_CHALLENGES: usize = 10_000;
/// Most outstanding challenges for one device id asked for from one address.
const MAX_CHALLENGES_PER_DEVICE: usize = 4;
/// GetRenewalChallenge calls one address (IPv6: one /64) may make at once...
const CHALLENGES_BURST_PER_PEER: u32 = 8;
/// ...and then one per this period (8 a minute).
const CHALLENGE_REFILL: Duration = Duration::from_millis(7_500);
/// Most addresses the challenge limiter tracks.
const MAX_CHALLENGE_PEERS: usize = 4_096;

/// What a device sends to renew without a valid certificate (identity.proto, RenewalProof).
/// The device id is as sent: the registry parses it, after deciding that a proof is the way
/// this caller renews.
#[derive(Debug, Clone)]
pub(crate) struct RenewalProof {
    /// The device renewing, as text.
    pub(crate) device_id: String,
    /// The challenge it was given.
    pub(crate) challenge: Vec<u8>,
    /// Its Ed25519 signature over `identity::renewal_proof_message`.
    pub(crate) signature: Vec<u8>,
}

/// A challenge just issued, and until when it may be used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RenewalChallenge {
    /// 32 random bytes.
    pub(crate) challenge: [u8; 32],
    /// When it stops being accepted.
    pub(crate) expires_at: SystemTime,
}

/// An outstanding renewal challenge.
#[derive(Debug, Clone, Copy)]
struct Challenge {
    /// The device it was issued for.
    device: DeviceId,
    /// The rate-limit key of the address that asked for it.
    asked_from: Option<IpAddr>,
    expires: SystemTime,
}

/// Outstanding renewal challenges and who may ask for more.
///
/// GetRenewalChallenge is anonymous (a device whose certificate expired has nothing else), so
/// its table is charged to the caller's address, never to the device named: the id is parsed
/// first (free), then the address's bucket is charged, and only challenges for a registered
/// device are kept (others get a challenge that is not stored, which no proof can
/// redeem, so the answer does not say whether the id exists). Per device, the cap counts only
/// the challenges one address asked for, so naming a victim's id from elsewhere cannot lock
/// the victim out. Expired challenges are dropped on every call.
#[derive(Debug)]
pub(super) struct Challenges {
    table: HashMap<[u8; 32], Challenge>,
    by_peer: AddressLimiter,
}

impl Default for Challenges {
    fn default() -> Self {
        Challenges {
            table: HashMap::new(),
            by_peer: AddressLimiter::new(CHALLENGES_BURST_PER_PEER, CHALLENGE_REFILL, MAX_CHALLENGE_PEERS),
        }
    }
}

impl Challenges {
    /// Charges one GetRenewalChallenge to `peer`.
    pub(super) fn admit(&mut self, peer: Option<IpAddr>, now: Instant) -> Result<(), RegistryError> {
        let Some(ip) = peer else { return Ok(()) };
        self.by_peer.admit(ip, now).map_err(|refused| match refused {
            Refused::Address(wait) => RegistryError::RateLimited(format!(
                "too many renewal challenges asked for from this address; retry in {} s",
                wait.as_secs().max(1)
            )),
            Refused::Table => RegistryError::RateLimited(
                "too many addresses asking for renewal challenges; retry in a minute".to_owned(),
            ),
        })
    }

    /// Stores `challenge` for `device`, asked for from `peer`, unless a cap is reached.
    pub(super) fn insert(
        &mut self,
        challenge: [u8; 32],
        device: DeviceId,
        peer: Option<IpAddr>,
        now: SystemTime,
    ) -> Result<(), RegistryError> {
        self.table.retain(|_, c| c.expires > now);
        let asked_from = peer.map(address_key);
        let same = self.table.values().filter(|c| c.device == device && c.asked_from == asked_from).count();
        if same >= MAX_CHALLENGES_PER_DEVICE {
            return Err(RegistryError::RateLimited(format!(
                "too many outstanding renewal challenges for device {device} from this address; use one or wait a minute"
            )));
        }
        if self.table.len() >= MAX_CHALLENGES {
            return Err(RegistryError::RateLimited(
                "too many outstanding renewal challenges; retry in a minute".to_owned(),
            ));
        }
        self.table.insert(challenge, Challenge { device, asked_from, expires: now + CHALLENGE_TTL });
        Ok(())
    }

    /// Takes `challenge` out (single use); whether it was issued for `device` and is fresh.
    pub(super) fn redeem(&mut self, challenge: &[u8], device: DeviceId, now: SystemTime) -> bool {
        let Ok(key) = <[u8; 32]>::try_from(challenge) else { return false };
        matches!(self.table.remove(&key), Some(c) if c.device == device && c.expires > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        text.parse().ok()
    }

    #[test]
    fn a_challenge_is_single_use_for_its_device_while_fresh() {
        let now = SystemTime::now();
        let (mut table, device) = (Challenges::default(), DeviceId::generate());
        for challenge in [[1; 32], [2; 32], [3; 32]] {
            assert!(table.insert(challenge, device, ip("192.0.2.1"), now).is_ok());
        }
        assert!(table.redeem(&[1; 32], device, now));
        assert!(!table.redeem(&[1; 32], device, now), "single use");
        assert!(!table.redeem(&[2; 32], DeviceId::generate(), now), "another device's");
        assert!(!table.redeem(&[2; 32], device, now), "taken out by the failed attempt");
        assert!(!table.redeem(&[3; 32], device, now + CHALLENGE_TTL), "expired");
        assert!(!table.redeem(&[9; 31], device, now), "not 32 bytes");
    }

    #[test]
    fn the_per_device_cap_counts_one_address_only() {
        let now = SystemTime::now();
        let (mut table, device) = (Challenges::default(), DeviceId::generate());
        for n in 0..MAX_CHALLENGES_PER_DEVICE {
            let challenge = [u8::try_from(n).unwrap_or(0); 32];
            assert!(table.insert(challenge, device, ip("2001:db8::1"), now).is_ok());
        }
        // The same /64 is the same address; another address is not held back.
        let refused = table.insert([100; 32], device, ip("2001:db8::2"), now);
        assert!(matches!(refused, Err(RegistryError::RateLimited(ref m)) if m.contains("this address")));
        assert!(table.insert([101; 32], device, ip("198.51.100.7"), now).is_ok());
        // Once they expire, the address may ask again.
        assert!(table.insert([102; 32], device, ip("2001:db8::1"), now + CHALLENGE_TTL).is_ok());
    }

    #[test]
    fn an_address_is_charged_per_call_and_an_unknown_one_is_not() {
        let mut table = Challenges::default();
        let start = Instant::now();
        for _ in 0..CHALLENGES_BURST_PER_PEER {
            assert!(table.admit(ip("203.0.113.5"), start).is_ok());
        }
        let refused = table.admit(ip("203.0.113.5"), start);
        assert!(matches!(refused, Err(RegistryError::RateLimited(ref m)) if m.contains("retry in")));
        assert!(table.admit(ip("203.0.113.6"), start).is_ok());
        assert!(table.admit(None, start).is_ok());
        assert!(table.admit(ip("203.0.113.5"), start + CHALLENGE_REFILL).is_ok());
    }
}
