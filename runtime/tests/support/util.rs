//! Small helpers shared by the test binaries: random identifiers, free ports, paths.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A random u64 (SipHash keyed by the process's random keys over a counter and the clock);
/// plenty for test identifiers and jitter, not for cryptography.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A random integer in `0..bound` (bound > 0).
pub fn random_below(bound: u64) -> u64 {
    random_u64() % bound.max(1)
}

/// A random UUID-shaped string (version 4 layout).
pub fn random_uuid() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// `len` random characters from Kubernetes' pod-name suffix alphabet.
pub fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| ALPHABET[random_below(ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// True if a TCP listener can be bound on `ip`:`port` right now.
pub fn tcp_port_free(ip: Ipv4Addr, port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(ip, port)).is_ok()
}

/// A currently free port in 10000..32768 (below Linux's ephemeral range, so outgoing
/// connections cannot grab it before the intended owner binds it), not in `exclude`.
pub fn free_port_below_ephemeral(exclude: &[u16]) -> Option<u16> {
    (0..200).find_map(|_| {
        let port = u16::try_from(10_000 + random_below(22_768)).ok()?;
        (!exclude.contains(&port) && tcp_port_free(Ipv4Addr::LOCALHOST, port)).then_some(port)
    })
}

/// The cargo target directory of this build (honours `CARGO_TARGET_DIR`): the directory above
/// the profile directory holding the `tidegate` binary.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        };
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tidegate"));
    bin.parent()
        .and_then(|profile| profile.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The workspace root (parent of the `runtime` crate).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The path of the `tidegate` binary under test.
pub fn tidegate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tidegate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_look_right() {
        let u = random_uuid();
        assert_eq!(u.len(), 36, "{u}");
        assert_eq!(u.as_bytes()[14], b'4');
        assert_ne!(random_uuid(), random_uuid());
        let s = random_suffix(5);
        assert_eq!(s.len(), 5);
        assert!(random_below(10) < 10);
    }
}
