//! Per-address budgets for anonymous network resources (connections, handshakes in progress):
//! a total cap and a cap per address, taken without waiting and released when the permit is
//! dropped, so a flood from one address cannot take what another address needs.
//!
//! An address is its IPv4 address, or its IPv6 /64 (one host usually owns a whole /64 and
//! would otherwise get a fresh budget per address); an IPv4-mapped IPv6 address is its IPv4.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The budget key of an address: IPv4 as is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
        },
    }
}

/// Why a permit was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The total budget is spent.
    Total,
    /// This address's budget is spent.
    PerAddress,
}

/// What a budget holds and has refused (for logs, tests and benches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetStats {
    /// Permits held now.
    pub held: usize,
    /// Distinct addresses holding a permit now.
    pub addresses: usize,
    /// Refusals since start because the total was spent.
    pub refused_total: u64,
    /// Refusals since start because the address's share was spent.
    pub refused_per_address: u64,
}

#[derive(Debug, Default)]
struct Counts {
    held: usize,
    by_address: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Inner {
    total: usize,
    per_address: usize,
    counts: Mutex<Counts>,
    refused_total: AtomicU64,
    refused_per_address: AtomicU64,
}

/// A budget of `total` permits, at most `per_address` of them for one address. The map holds
/// only addresses with a permit, so it never has more than `total` entries.
#[derive(Debug, Clone)]
pub struct AddressBudget {
    inner: Arc<Inner>,
}

impl AddressBudget {
    /// `total` permits, `per_address` for one address (both at least 1).
    pub fn new(total: usize, per_address: usize) -> Self {
        AddressBudget {
            inner: Arc::new(Inner {
                total: total.max(1),
                per_address: per_address.max(1),
                counts: Mutex::new(Counts::default()),
                refused_total: AtomicU64::new(0),
                refused_per_address: AtomicU64::new(0),
            }),
        }
    }

    /// A permit for `ip`, at once or not at all.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<AddressPermit, Full> {
        let key = address_key(ip);
        let mut counts = self.inner.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine = counts.by_address.get(&key).copied().unwrap_or(0);
        if counts.held >= self.inner.total {
            self.inner.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Full::Total);
        }
        if mine >= self.inner.per_address {
            self.inner.refused_per_address.fetch_add(1, Ordering::Relaxed);
            return Err(Full::PerAddress);
        }
        counts.held += 1;
        counts.by_address.insert(key, mine + 1);
        Ok(AddressPermit { inner: Arc::clone(&self.inner), key })
    }

    /// What it holds and has refused.
    pub fn stats(&self) -> BudgetStats {
        let counts = self.inner.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        BudgetStats {
            held: counts.held,
            addresses: counts.by_address.len(),
            refused_total: self.inner.refused_total.load(Ordering::Relaxed),
            refused_per_address: self.inner.refused_per_address.load(Ordering::Relaxed),
        }
    }

    /// Permits `ip`'s address holds now.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub fn held_by(&self, ip: IpAddr) -> usize {
        let counts = self.inner.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.by_address.get(&address_key(ip)).copied().unwrap_or(0)
    }
}

/// One permit of an [`AddressBudget`]; dropping it gives it back.
#[derive(Debug)]
pub struct AddressPermit {
    inner: Arc<Inner>,
    key: IpAddr,
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut counts = self.inner.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.held = counts.held.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_address.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn ipv6_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(address_key(ip("2001:db8:1:2:aaaa::1")), address_key(ip("2001:db8:1:2:bbbb::2")));
        assert_ne!(address_key(ip("2001:db8:1:2::1")), address_key(ip("2001:db8:1:3::1")));
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_ne!(address_key(ip("10.0.0.1")), address_key(ip("10.0.0.2")));
    }

    #[test]
    fn one_address_cannot_take_another_addresses_share() {
        let budget = AddressBudget::new(4, 2);
        let a = ip("127.0.0.1");
        let held: Vec<_> = (0..2).filter_map(|_| budget.try_acquire(a).ok()).collect();
        assert_eq!(held.len(), 2);
        assert_eq!(budget.try_acquire(a).err(), Some(Full::PerAddress));
        // Another address in the same /64 is the same address.
        let v6 = budget.try_acquire(ip("2001:db8::1"));
        assert!(v6.is_ok());
        let v6_again = budget.try_acquire(ip("2001:db8::2"));
        assert!(v6_again.is_ok());
        // The total is spent now, whatever the address.
        assert_eq!(budget.try_acquire(ip("127.0.0.2")).err(), Some(Full::Total));
        drop(held);
        assert_eq!(budget.try_acquire(ip("2001:db8::3")).err(), Some(Full::PerAddress));
        let back = budget.try_acquire(a);
        assert!(back.is_ok(), "released on drop");
        let stats = budget.stats();
        assert_eq!((stats.refused_per_address, stats.refused_total), (2, 1));
        drop(v6);
        assert_eq!(budget.held_by(ip("2001:db8::9")), 1);
        assert_eq!(budget.stats().held, 2);
        drop((v6_again, back));
        assert_eq!(
            budget.stats(),
            BudgetStats { refused_total: 1, refused_per_address: 2, ..Default::default() }
        );
    }
}
