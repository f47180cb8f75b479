//! Helpers shared by the integration tests: the conformance case model, child-process guards,
//! a wire-exact HTTP client, upstream's comparison rules, status checks, and the suite runner.

pub mod case;
pub mod certs;
pub mod client;
pub mod compare;
pub mod exec;
pub mod extra;
pub mod fixture;
pub mod procs;
pub mod runner;
pub mod status;
pub mod util;
