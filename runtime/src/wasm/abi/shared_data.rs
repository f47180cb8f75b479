//! Shared key-value data: `proxy_get_shared_data`, `proxy_set_shared_data`.
//!
//! One process-wide store, shared by every instance of every worker, with one namespace per VM
//! id as in Envoy. A filter's VM id is its name, so all instances of a filter (one per worker)
//! see the same data and different filters do not see each other's. Each entry carries a CAS
//! number (never 0) that changes on every write; a set with a non-zero CAS that does not match
//! fails with `CAS_MISMATCH` (a set with CAS 0, or of a new key, always succeeds), exactly
//! Envoy's rule. Values are stored as `Arc<[u8]>`, so a read holds the lock only for a refcount
//! bump and never while guest code (the allocator) runs.
//!
//! Bounds: keys up to [`MAX_KEY`], values up to [`MAX_VALUE`] (larger: `BAD_ARGUMENT`), and at
//! most [`MAX_BYTES_PER_VM`] per VM id (a write past it: `INTERNAL_FAILURE`), so a filter that
//! keeps writing new keys cannot exhaust the host's memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use wasmtime::{Caller, Linker};

use super::{ENV, Status, status};
use crate::wasm::host::HostState;
use crate::wasm::memory::{bytes, copy_to_guest, memory, range, with_memory, write_u32};

/// The longest key.
pub(crate) const MAX_KEY: usize = 4 * 1024;
/// The largest value.
pub(crate) const MAX_VALUE: usize = 1024 * 1024;
/// The most key + value bytes one VM id may store.
pub(crate) const MAX_BYTES_PER_VM: usize = 64 * 1024 * 1024;

/// A value and its CAS number.
type Entry = (Arc<[u8]>, u32);

/// One VM id's entries, and their total size.
#[derive(Default)]
struct VmData {
    entries: HashMap<Box<[u8]>, Entry>,
    bytes: usize,
}

type Store = HashMap<Arc<str>, VmData>;

static STORE: LazyLock<RwLock<Store>> = LazyLock::new(Default::default);
static NEXT_CAS: AtomicU32 = AtomicU32::new(1);

fn next_cas() -> u32 {
    loop {
        let cas = NEXT_CAS.fetch_add(1, Ordering::Relaxed);
        if cas != 0 {
            return cas;
        }
    }
}

/// The value and CAS of `key` in `vm_id`'s namespace.
pub(crate) fn get(vm_id: &str, key: &[u8]) -> Option<Entry> {
    let store = STORE.read().unwrap_or_else(PoisonError::into_inner);
    store.get(vm_id)?.entries.get(key).cloned()
}

/// Sets `key` in `vm_id`'s namespace (see the module doc for the CAS rule).
pub(crate) fn set(vm_id: &Arc<str>, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
    if key.len() > MAX_KEY || value.len() > MAX_VALUE {
        return Err(Status::BadArgument);
    }
    let mut store = STORE.write().unwrap_or_else(PoisonError::into_inner);
    let vm = store.entry(vm_id.clone()).or_default();
    match vm.entries.get_mut(key) {
        Some((current, current_cas)) => {
            if cas != 0 && cas != *current_cas {
                return Err(Status::CasMismatch);
            }
            let bytes = vm.bytes - current.len() + value.len();
            if bytes > MAX_BYTES_PER_VM {
                return Err(Status::InternalFailure);
            }
            *current = Arc::from(value);
            *current_cas = next_cas();
            vm.bytes = bytes;
        }
        None => {
            let bytes = vm.bytes + key.len() + value.len();
            if bytes > MAX_BYTES_PER_VM {
                return Err(Status::InternalFailure);
            }
            vm.entries.insert(Box::from(key), (Arc::from(value), next_cas()));
            vm.bytes = bytes;
        }
    }
    Ok(())
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_get_shared_data", proxy_get_shared_data)?;
    linker.func_wrap(ENV, "proxy_set_shared_data", proxy_set_shared_data)?;
    Ok(())
}

fn proxy_get_shared_data(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_len: i32,
    ret_cas: i32,
) -> wasmtime::Result<i32> {
    let found = with_memory(&mut caller, |mem, state| {
        let key = bytes(mem, key_ptr, key_len)?;
        for slot in [ret_ptr, ret_len, ret_cas] {
            range(mem.len(), slot, 4)?;
        }
        get(&state.filter, key).ok_or(Status::NotFound)
    });
    let (value, cas) = match found {
        Ok(found) => found,
        Err(s) => return Ok(s as i32),
    };
    let mem = match memory(&caller) {
        Ok(mem) => mem,
        Err(s) => return Ok(s as i32),
    };
    if let Err(s) = copy_to_guest(&mut caller, mem, &value, ret_ptr, ret_len)? {
        return Ok(s as i32);
    }
    Ok(status(write_u32(mem.data_mut(&mut caller), ret_cas, cas)))
}

fn proxy_set_shared_data(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    value_ptr: i32,
    value_len: i32,
    cas: i32,
) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let key = bytes(mem, key_ptr, key_len)?;
        let value = bytes(mem, value_ptr, value_len)?;
        set(&state.filter, key, value, cas as u32)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_follows_envoy() {
        let vm: Arc<str> = Arc::from("shared-data-unit-test");
        assert_eq!(get(&vm, b"k"), None);
        // A new key is written whatever the CAS.
        set(&vm, b"k", b"v1", 12345).unwrap();
        let (value, cas1) = get(&vm, b"k").unwrap();
        assert_eq!(&*value, b"v1");
        assert_ne!(cas1, 0);
        // Matching CAS: written, new CAS.
        set(&vm, b"k", b"v2", cas1).unwrap();
        let (value, cas2) = get(&vm, b"k").unwrap();
        assert_eq!(&*value, b"v2");
        assert_ne!(cas2, cas1);
        // Stale CAS: refused, value kept.
        assert_eq!(set(&vm, b"k", b"v3", cas1), Err(Status::CasMismatch));
        assert_eq!(&*get(&vm, b"k").unwrap().0, b"v2");
        // CAS 0: unconditional.
        set(&vm, b"k", b"v4", 0).unwrap();
        assert_eq!(&*get(&vm, b"k").unwrap().0, b"v4");
        // Namespaces are per VM id.
        assert_eq!(get("another-vm", b"k"), None);
        // Bounds.
        assert_eq!(set(&vm, &vec![b'k'; MAX_KEY + 1], b"v", 0), Err(Status::BadArgument));
        assert_eq!(set(&vm, b"big", &vec![0; MAX_VALUE + 1], 0), Err(Status::BadArgument));
    }
}
