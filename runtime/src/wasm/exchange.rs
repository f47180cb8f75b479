//! The per-request state hostcalls act on: headers, bodies, trailers, properties and a local
//! reply.
//!
//! The proxy fills an [`HttpExchange`] from the downstream request, hands it to each filter
//! callback, and reads the result back. During a callback the exchange is *moved* into the
//! store (`std::mem::take`, no copy, no allocation) and moved back afterwards, so hostcalls reach
//! it without locks or borrowed lifetimes.

use bytes::{Bytes, BytesMut};

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
    /// The request body as the running body or trailers callback sees it (`HTTP_REQUEST_BODY`):
    /// the new chunk, or everything buffered for that filter while it paused. The proxy swaps
    /// each filter's own buffer in before the callback and takes it back afterwards.
    pub request_body: BodyBuffer,
    /// The response body as the running callback sees it (`HTTP_RESPONSE_BODY`).
    pub response_body: BodyBuffer,
    /// Request trailers (`HTTP_REQUEST_TRAILERS`); empty when the request has none. A filter may
    /// create them in its last request body callback (`end_of_stream`).
    pub request_trailers: HeaderList,
    /// Response trailers (`HTTP_RESPONSE_TRAILERS`); empty when the response has none.
    pub response_trailers: HeaderList,
    /// Set by the proxy once the response headers went downstream: from then on a filter can no
    /// longer replace the response (`proxy_send_local_response` is refused).
    pub response_sent: bool,
    /// Properties of the connection the request came on (`source.*`, `destination.*`,
    /// `connection.*`, the Gateway), built once per connection and shared by its requests.
    /// Read after [`properties`](Self::properties), which may shadow them.
    pub connection: Option<std::sync::Arc<ConnectionProperties>>,
}

/// Properties of one connection: `(dotted path, value)` pairs in Envoy's encodings.
#[derive(Clone, Debug, Default)]
pub struct ConnectionProperties {
    pub entries: Vec<(&'static str, Vec<u8>)>,
}

impl HttpExchange {
    /// The value of property `path` (dotted), set on the request or on its connection.
    pub fn property(&self, path: &str) -> Option<&[u8]> {
        self.properties.get(path).or_else(|| {
            let connection = self.connection.as_deref()?;
            connection
                .entries
                .iter()
                .find(|(k, _)| *k == path)
                .map(|(_, v)| v.as_slice())
        })
    }
}

/// Body bytes a filter sees and may change (`proxy_get_buffer_bytes` /
/// `proxy_set_buffer_bytes`).
///
/// One chunk is kept as the `Bytes` hyper produced, so a chunk that a filter only looks at (or
/// does not look at) is never copied. Appending a second chunk (the host buffering for a paused
/// filter) or a write by the filter makes it one contiguous, growable buffer; the copies are
/// amortised, so buffering a body costs O(body).
#[derive(Clone, Debug, Default)]
pub struct BodyBuffer {
    /// The bytes while they are one received chunk (`owned` is `None`).
    shared: Bytes,
    /// The bytes once they were appended to or written.
    owned: Option<BytesMut>,
    modified: bool,
}

// === impl BodyBuffer ===

impl BodyBuffer {
    /// A buffer holding `bytes` (not copied).
    pub fn new(bytes: Bytes) -> Self {
        Self {
            shared: bytes,
            owned: None,
            modified: false,
        }
    }

    /// The bytes, contiguous.
    pub fn as_slice(&self) -> &[u8] {
        match &self.owned {
            Some(b) => b,
            None => &self.shared,
        }
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a chunk that arrived (not a change by a filter: [`is_modified`](Self::is_modified)
    /// is unaffected). The first chunk into an empty buffer is kept without a copy.
    pub fn append(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        if self.is_empty() {
            self.shared = chunk;
            self.owned = None;
            return;
        }
        self.owned().extend_from_slice(&chunk);
    }

    /// Replaces the `size` bytes at `start` by `data`, as `proxy_set_buffer_bytes` does:
    /// `(0, 0)` prepends, `start >= len` appends, anything else replaces the window (clamped to
    /// the end of the buffer), so `(0, len)` replaces everything. Marks the buffer modified.
    pub fn splice(&mut self, start: usize, size: usize, data: &[u8]) {
        self.modified = true;
        let len = self.len();
        let start = start.min(len);
        let end = start.saturating_add(size).min(len);
        if start == 0 && end == len {
            // Replacing everything: no need to keep (or copy) the old bytes.
            let mut fresh = BytesMut::with_capacity(data.len());
            fresh.extend_from_slice(data);
            self.shared = Bytes::new();
            self.owned = Some(fresh);
            return;
        }
        let buf = self.owned();
        if start == end && start == buf.len() {
            buf.extend_from_slice(data);
            return;
        }
        let tail = buf.split_off(end);
        buf.truncate(start);
        buf.reserve(data.len() + tail.len());
        buf.extend_from_slice(data);
        buf.extend_from_slice(&tail);
    }

    /// Whether a filter wrote to the buffer since it was created (or since
    /// [`take_modified`](Self::take_modified)).
    pub fn is_modified(&self) -> bool {
        self.modified
    }

    /// Returns and clears the modified flag.
    pub fn take_modified(&mut self) -> bool {
        std::mem::take(&mut self.modified)
    }

    /// Takes the bytes out, leaving the buffer empty (and unmodified).
    pub fn take(&mut self) -> Bytes {
        self.modified = false;
        match self.owned.take() {
            Some(b) => b.freeze(),
            None => std::mem::take(&mut self.shared),
        }
    }

    fn owned(&mut self) -> &mut BytesMut {
        let shared = &mut self.shared;
        self.owned.get_or_insert_with(|| {
            let chunk = std::mem::take(shared);
            let mut owned = BytesMut::with_capacity(chunk.len().saturating_mul(2).max(64));
            owned.extend_from_slice(&chunk);
            owned
        })
    }
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
