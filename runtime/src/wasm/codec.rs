//! Wire formats of proxy-wasm ABI v0.2.1 (spec "Serialization"; SDK `hostcalls::utils`).
//!
//! Header map: `u32 count`, then `count × (u32 name_len, u32 value_len)`, then for each pair
//! `name, 0x00, value, 0x00`; integers little-endian, the NULs not counted in the lengths. An empty
//! map is `00 00 00 00` from the SDK, and the spec also allows zero bytes or a single `0x00`.
//! Property paths are segments joined by `0x00` with no trailing NUL.

/// Why a serialized map was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapError;

/// A validated serialized map borrowed from guest memory; iterating it cannot fail.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SerializedMap<'a> {
    count: usize,
    sizes: &'a [u8],
    data: &'a [u8],
}

// === impl SerializedMap ===

impl<'a> SerializedMap<'a> {
    /// Checks the whole encoding (counts, lengths, terminators, no trailing bytes).
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, MapError> {
        if bytes.is_empty() || bytes == [0] {
            return Ok(Self {
                count: 0,
                sizes: &[],
                data: &[],
            });
        }
        let count = read_u32(bytes, 0).ok_or(MapError)? as usize;
        let sizes_end = count.checked_mul(8).and_then(|n| n.checked_add(4)).ok_or(MapError)?;
        let sizes = bytes.get(4..sizes_end).ok_or(MapError)?;
        let data = &bytes[sizes_end..];
        let mut p = 0usize;
        for i in 0..count {
            let name_len = read_u32(sizes, i * 8).ok_or(MapError)? as usize;
            let value_len = read_u32(sizes, i * 8 + 4).ok_or(MapError)? as usize;
            let name_end = p.checked_add(name_len).ok_or(MapError)?;
            let value_start = name_end.checked_add(1).ok_or(MapError)?;
            let value_end = value_start.checked_add(value_len).ok_or(MapError)?;
            if data.get(name_end) != Some(&0) || data.get(value_end) != Some(&0) {
                return Err(MapError);
            }
            p = value_end + 1;
        }
        if p != data.len() {
            return Err(MapError);
        }
        Ok(Self { count, sizes, data })
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The pairs in order, as raw bytes.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let Self { count, sizes, data } = *self;
        let mut p = 0usize;
        (0..count).map(move |i| {
            // Bounds were checked in `parse`.
            let name_len = read_u32(sizes, i * 8).unwrap_or(0) as usize;
            let value_len = read_u32(sizes, i * 8 + 4).unwrap_or(0) as usize;
            let name = &data[p..p + name_len];
            let value_start = p + name_len + 1;
            let value = &data[value_start..value_start + value_len];
            p = value_start + value_len + 1;
            (name, value)
        })
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The serialized size of `entries`, or `None` if it does not fit the ABI's u32 lengths.
pub(crate) fn serialized_map_size(entries: &[(String, Vec<u8>)]) -> Option<usize> {
    let mut size = 4usize.checked_add(entries.len().checked_mul(8)?)?;
    for (name, value) in entries {
        u32::try_from(name.len()).ok()?;
        u32::try_from(value.len()).ok()?;
        size = size.checked_add(name.len() + value.len() + 2)?;
    }
    u32::try_from(size).ok()?;
    Some(size)
}

/// Appends the serialization of `entries` to `out`. Lengths must fit u32 (see
/// [`serialized_map_size`]).
pub(crate) fn serialize_map(entries: &[(String, Vec<u8>)], out: &mut Vec<u8>) {
    if let Some(size) = serialized_map_size(entries) {
        out.reserve(size);
    }
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (name, value) in entries {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in entries {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
}

/// Copies a guest property path into `out` with the NUL separators turned into dots, the form
/// [`PropertyMap`](super::PropertyMap) keys use. `None` if the path is not UTF-8.
pub(crate) fn dotted_path<'o>(path: &[u8], out: &'o mut String) -> Option<&'o str> {
    out.clear();
    let text = std::str::from_utf8(path).ok()?;
    out.extend(text.chars().map(|c| if c == '\0' { '.' } else { c }));
    Some(out.as_str())
}

/// An HTTP field name a filter may set: a token (RFC 9110 `tchar`), optionally prefixed by `:`
/// for pseudo-headers. Upper case is accepted and lowercased on store.
pub(crate) fn valid_header_name(name: &[u8]) -> bool {
    let token = name.strip_prefix(b":").unwrap_or(name);
    !token.is_empty()
        && token
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An HTTP field value as `http::HeaderValue` accepts it: no control characters but tab
/// (in particular no CR, LF or NUL, which would allow header injection).
pub(crate) fn valid_header_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The SDK's test vector (proxy-wasm-rust-sdk v0.2.5, src/hostcalls.rs `utils::tests`).
    const MAP: &[(&str, &str)] = &[
        (":method", "GET"),
        (":path", "/bytes/1"),
        (":authority", "httpbin.org"),
        ("Powered-By", "proxy-wasm"),
    ];

    #[rustfmt::skip]
    const SERIALIZED_MAP: &[u8] = &[
        4, 0, 0, 0,
        7, 0, 0, 0, 3, 0, 0, 0,
        5, 0, 0, 0, 8, 0, 0, 0,
        10, 0, 0, 0, 11, 0, 0, 0,
        10, 0, 0, 0, 10, 0, 0, 0,
        58, 109, 101, 116, 104, 111, 100, 0,
        71, 69, 84, 0,
        58, 112, 97, 116, 104, 0,
        47, 98, 121, 116, 101, 115, 47, 49, 0,
        58, 97, 117, 116, 104, 111, 114, 105, 116, 121, 0,
        104, 116, 116, 112, 98, 105, 110, 46, 111, 114, 103, 0,
        80, 111, 119, 101, 114, 101, 100, 45, 66, 121, 0,
        112, 114, 111, 120, 121, 45, 119, 97, 115, 109, 0,
    ];

    fn owned(map: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        map.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn serialize_matches_sdk_vector() {
        let mut out = Vec::new();
        serialize_map(&owned(MAP), &mut out);
        assert_eq!(out, SERIALIZED_MAP);
        assert_eq!(serialized_map_size(&owned(MAP)), Some(SERIALIZED_MAP.len()));
    }

    #[test]
    fn serialize_empty_is_four_zero_bytes() {
        let mut out = Vec::new();
        serialize_map(&[], &mut out);
        assert_eq!(out, [0, 0, 0, 0]);
    }

    #[test]
    fn serialize_single_pair_matches_research_example() {
        let mut out = Vec::new();
        serialize_map(&owned(&[(":method", "GET")]), &mut out);
        assert_eq!(
            out,
            b"\x01\x00\x00\x00\x07\x00\x00\x00\x03\x00\x00\x00:method\x00GET\x00"
        );
    }

    #[test]
    fn parse_sdk_vector_round_trips() {
        let map = SerializedMap::parse(SERIALIZED_MAP).expect("valid");
        assert_eq!(map.len(), 4);
        let pairs: Vec<_> = map
            .iter()
            .map(|(k, v)| (std::str::from_utf8(k).unwrap(), std::str::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(pairs, MAP);
    }

    #[test]
    fn parse_accepts_every_empty_form() {
        for empty in [&[][..], &[0][..], &[0, 0, 0, 0][..]] {
            assert_eq!(SerializedMap::parse(empty).expect("empty").len(), 0, "{empty:?}");
        }
    }

    #[test]
    fn parse_rejects_malformed_maps() {
        let cases: Vec<Vec<u8>> = vec![
            vec![1, 0, 0],                                                          // short count
            vec![1, 0, 0, 0],                                                       // count without sizes
            vec![1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'a'],                         // truncated data
            vec![1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'a', 1, b'b', 0],             // missing NUL after name
            vec![1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'a', 0, b'b', 0, 9],          // trailing bytes
            vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],                               // absurd count
            vec![1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], // absurd lengths
        ];
        for case in cases {
            assert_eq!(SerializedMap::parse(&case).err(), Some(MapError), "{case:?}");
        }
    }

    #[test]
    fn property_path_segments_become_dots() {
        // The SDK serializes ["source", "address"] as "source\0address" (no trailing NUL).
        let mut buf = String::new();
        assert_eq!(dotted_path(b"source\0address", &mut buf), Some("source.address"));
        assert_eq!(dotted_path(b"tidegate.cluster", &mut buf), Some("tidegate.cluster"));
        assert_eq!(dotted_path(b"\xff", &mut buf), None);
    }

    #[test]
    fn header_validation() {
        assert!(valid_header_name(b"x-tidegate"));
        assert!(valid_header_name(b":path"));
        assert!(valid_header_name(b"Content-Type"));
        assert!(!valid_header_name(b""));
        assert!(!valid_header_name(b":"));
        assert!(!valid_header_name(b"bad name"));
        assert!(!valid_header_name(b"x\r\ny"));
        assert!(valid_header_value(b"text/html; charset=utf-8\t"));
        assert!(valid_header_value(b""));
        assert!(!valid_header_value(b"a\r\nset-cookie: x"));
        assert!(!valid_header_value(b"a\0b"));
    }
}
