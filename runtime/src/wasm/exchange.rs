//! The per-request state hostcalls act on: headers, properties and a local reply.
//!
//! The proxy fills an [`HttpExchange`] from the downstream request, hands it to each filter
//! callback, and reads the result back. During a callback the exchange is *moved* into the
//! store (`std::mem::take`, no copy, no allocation) and moved back afterwards, so hostcalls reach
//! it without locks or borrowed lifetimes.

/// The request (and later the response) as the filters see and change it.
#[derive(Default, Clone, Debug)]
pub struct HttpExchange {
    /// Request headers, pseudo-headers first: `:method`, `:scheme`, `:authority`, `:path`.
    pub request_headers: HeaderList,
    /// Response headers, `:status` first. Empty until the upstream answered.
    pub response_headers: HeaderList,
    /// Properties by dotted path, set by the host (`tidegate.listener_port`, `source.address`,
    /// `request.protocol`, …) or by filters through `proxy_set_property` (`tidegate.cluster`).
    pub properties: PropertyMap,
    /// Set when a filter called `proxy_send_local_response`: the proxy answers with it instead
    /// of forwarding.
    pub local_reply: Option<LocalReply>,
}

/// An ordered list of HTTP fields: names are stored lowercase, order and duplicates are kept.
///
/// Lookups compare names ASCII-case-insensitively. Sized for the usual few dozen headers: every
/// operation is a linear scan, which beats hashing at that size and allocates nothing.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct HeaderList {
    entries: Vec<(String, Vec<u8>)>,
}

// === impl HeaderList ===

impl HeaderList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty list with room for `capacity` fields.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// A list of `pairs`, in order; names are lowercased.
    pub fn from_pairs<N: AsRef<str>, V: Into<Vec<u8>>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        let mut list = Self::new();
        for (name, value) in pairs {
            list.add(name.as_ref(), value);
        }
        list
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.get_bytes(name.as_bytes())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.as_bytes().eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }

    /// Replaces every value of `name` by `value`: the first entry keeps its position, later
    /// duplicates are removed; appends when `name` is absent.
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        let value = value.into();
        match self.position(name.as_bytes()) {
            Some(first) => {
                self.entries[first].1 = value;
                self.remove_after(first, name.as_bytes());
            }
            None => self.entries.push((lowercase(name), value)),
        }
    }

    /// Appends an entry, keeping existing values of `name`.
    pub fn add(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.entries.push((lowercase(name), value.into()));
    }

    /// Removes every value of `name`; returns whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        self.remove_bytes(name.as_bytes())
    }

    /// The entries in order, as `(lowercase name, value)`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + '_ {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The number of entries (duplicates counted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every entry, keeping the allocation.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    // --- byte-level operations for hostcalls (names come from guest memory) ---

    pub(crate) fn entries(&self) -> &[(String, Vec<u8>)] {
        &self.entries
    }

    pub(crate) fn get_bytes(&self, name: &[u8]) -> Option<&[u8]> {
        self.position(name).map(|i| self.entries[i].1.as_slice())
    }

    /// `set` for hostcalls: reuses the existing value's allocation when it is large enough.
    /// `name` must be valid UTF-8 (checked by the caller).
    pub(crate) fn set_bytes(&mut self, name: &str, value: &[u8]) {
        match self.position(name.as_bytes()) {
            Some(first) => {
                let slot = &mut self.entries[first].1;
                slot.clear();
                slot.extend_from_slice(value);
                self.remove_after(first, name.as_bytes());
            }
            None => self.entries.push((lowercase(name), value.to_vec())),
        }
    }

    pub(crate) fn remove_bytes(&mut self, name: &[u8]) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| !n.as_bytes().eq_ignore_ascii_case(name));
        self.entries.len() != before
    }

    pub(crate) fn replace_all(&mut self, entries: Vec<(String, Vec<u8>)>) {
        self.entries = entries;
    }

    fn position(&self, name: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .position(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
    }

    fn remove_after(&mut self, first: usize, name: &[u8]) {
        if self.entries[first + 1..]
            .iter()
            .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
        {
            let mut index = 0;
            self.entries.retain(|(n, _)| {
                let keep = index <= first || !n.as_bytes().eq_ignore_ascii_case(name);
                index += 1;
                keep
            });
        }
    }
}

fn lowercase(name: &str) -> String {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase()
    } else {
        name.to_owned()
    }
}

/// Properties by dotted path (`tidegate.cluster` → bytes).
///
/// A guest asks for a path as NUL-separated segments (`tidegate\0cluster`); the host matches it
/// against the dotted key, so a segment that itself contains a dot is indistinguishable from two
/// segments. Values are raw bytes: tidegate writes strings as UTF-8 text (ports as decimal text,
/// e.g. `tidegate.listener_port` = `"8080"`), which is what `tidegate-sdk` reads back.
///
/// Sized for the few dozen properties a request carries: a linear scan, no hashing.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct PropertyMap {
    entries: Vec<(String, Vec<u8>)>,
}

// === impl PropertyMap ===

impl PropertyMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value at `path` (dotted).
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.entries.iter().find(|(k, _)| k == path).map(|(_, v)| v.as_slice())
    }

    /// Sets the value at `path` (dotted), replacing an existing one.
    pub fn set(&mut self, path: &str, value: impl Into<Vec<u8>>) {
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| k == path) {
            Some((_, slot)) => *slot = value,
            None => self.entries.push((path.to_owned(), value)),
        }
    }

    /// Removes the value at `path`, returning it.
    pub fn remove(&mut self, path: &str) -> Option<Vec<u8>> {
        let index = self.entries.iter().position(|(k, _)| k == path)?;
        Some(self.entries.remove(index).1)
    }

    /// The entries in insertion order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The number of properties.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `set` for hostcalls: reuses the existing value's allocation.
    pub(crate) fn set_bytes(&mut self, path: &str, value: &[u8]) {
        match self.entries.iter_mut().find(|(k, _)| k == path) {
            Some((_, slot)) => {
                slot.clear();
                slot.extend_from_slice(value);
            }
            None => self.entries.push((path.to_owned(), value.to_vec())),
        }
    }
}

/// The answer a filter gave instead of forwarding (`proxy_send_local_response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status code (100..=999).
    pub status: u16,
    /// Headers to send, names lowercase, in the order the filter gave them.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The response body.
    pub body: Vec<u8>,
    /// Why the filter answered (Envoy's "response code details"), for logs. May be empty.
    pub details: String,
    /// The gRPC status for a gRPC reply (`grpc-status` trailer); `None` for plain HTTP (the SDK
    /// passes -1).
    pub grpc_status: Option<i32>,
}
