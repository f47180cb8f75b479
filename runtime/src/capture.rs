//! Transparent capture on the node (`tidegate run --capture`): one nftables table of tidegate's
//! own sends TCP from the pod networks to tidegate's transparent listener with TPROXY, and a
//! policy-routing rule delivers the marked packets locally.
//!
//! What tidegate owns, and the only things it ever creates or removes: the nftables table
//! `ip tidegate`, the `ip rule` selecting fwmark [`MARK`] into routing table [`ROUTE_TABLE`], and
//! that table's one route. [`rules`] generates the ruleset (pure); [`install`] applies and
//! removes it with the `nft` and `ip` binaries.

pub mod install;
pub mod rules;

pub use self::install::{Capture, CaptureError};
pub use self::rules::{CapturePlan, DEFAULT_INBOUND_PORT, DEFAULT_PORT, MARK, PodCidr, ROUTE_TABLE, TABLE, Transport};
