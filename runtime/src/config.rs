//! Configuration objects: the typed Kubernetes objects tidegate reads, and the sources that
//! produce them (a watched directory today; the API server later). Everything after the
//! [`ObjectStore`] is shared by every source.

pub mod dir;
pub mod objects;
pub mod store;
pub mod wasmfilter;

pub use self::objects::{Object, ObjectKey, ObjectMeta};
pub use self::store::{ConfigError, ObjectStore};
