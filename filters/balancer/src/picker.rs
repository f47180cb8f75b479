//! How an endpoint is chosen: one [`Picker`] per cluster, built from the cluster's
//! [`Algorithm`]. A new algorithm is a new module here plus one arm in [`new_picker`]; the
//! `match` is exhaustive, so adding an [`Algorithm`] variant without a picker does not compile.

pub mod round_robin;

use crate::config::Algorithm;

pub use self::round_robin::RoundRobin;

/// Chooses among a cluster's endpoints, request after request. A picker owns whatever state its
/// algorithm needs (a cursor, load counters, a hash ring); it lives as long as the configuration
/// it was built for, in one VM (so no locking: a VM is single-threaded).
pub trait Picker {
    /// The index in `endpoints` of the endpoint for the next request, or `None` when there is
    /// nothing to pick. `endpoints` is the same slice for every call on one picker.
    fn pick(&mut self, endpoints: &[String]) -> Option<usize>;
}

/// The picker for `algorithm`. `seed` spreads starting points, so VMs that start together (one
/// per worker) do not all send their first request to the same endpoint.
pub fn new_picker(algorithm: Algorithm, seed: u64) -> Box<dyn Picker> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::starting_at(seed)),
    }
}
