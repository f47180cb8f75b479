//! Which address each Gateway is served on.
//!
//! On a cluster every Gateway gets its own address, so two Gateways may both listen on port 80.
//! One node serving many Gateways needs the same: a Gateway's `spec.addresses` (type
//! IPAddress) is honoured, and with an address pool the rest get an address each, chosen by a
//! hash of `namespace/name` so it stays put when other Gateways come and go.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// An IPv4 range (`127.0.100.0/24`) Gateways take addresses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPool {
    base: u32,
    size: u32,
}

impl FromStr for AddressPool {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR like 127.0.100.0/24"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{ip:?}: {e}; the pool must be IPv4"))?;
        let prefix: u32 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("prefix /{prefix} must be between /8 and /30"));
        }
        let size = 1u32 << (32 - prefix);
        let base = u32::from(ip) & !(size - 1);
        Ok(Self { base, size })
    }
}

impl AddressPool {
    /// A stable address for `key` that no one in `taken` has (network and broadcast skipped).
    pub fn assign(&self, key: &str, taken: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        let usable = self.size - 2;
        let start = fnv1a(key) % usable;
        (0..usable)
            .map(|i| IpAddr::V4(Ipv4Addr::from(self.base + 1 + (start + i) % usable)))
            .find(|ip| !taken.contains(ip))
    }
}

fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |hash, b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigns_stable_distinct_addresses() {
        let pool: AddressPool = "127.0.100.0/24".parse().expect("pool");
        let mut taken = BTreeSet::new();
        let a = pool.assign("ns/a", &taken).expect("address");
        taken.insert(a);
        let b = pool.assign("ns/b", &taken).expect("address");
        assert_ne!(a, b);
        assert_eq!(pool.assign("ns/a", &BTreeSet::new()), Some(a), "same key, same address");
        let IpAddr::V4(v4) = a else { panic!("v4") };
        assert_eq!(&v4.octets()[..3], &[127, 0, 100]);
        assert!(v4.octets()[3] != 0 && v4.octets()[3] != 255);
    }

    #[test]
    fn rejects_bad_pools() {
        assert!("127.0.0.1".parse::<AddressPool>().is_err());
        assert!("::1/64".parse::<AddressPool>().is_err());
        assert!("10.0.0.0/31".parse::<AddressPool>().is_err());
    }
}
