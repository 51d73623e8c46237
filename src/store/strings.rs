//! A shard's column of strings (customer ids, e-mails, text attributes): one byte buffer holding
//! each string behind a varint length, and one start offset per ordinal. Reading a string touches
//! the offset and then one run of bytes (two cache lines at most for ids), which keeps the
//! request-time id check cheap. A replaced or erased string is zeroed at once (an erased
//! customer's e-mail does not linger in memory) and the buffer is compacted when half is garbage.

/// Marks an ordinal with no string.
const NONE: u32 = u32::MAX;
/// Largest growth of the byte buffer at once.
const GROW_STEP: usize = 64 * 1024;

/// Strings of one shard, indexed by local ordinal. Each string is at most 65,535 bytes.
#[derive(Debug, Default, Clone)]
pub struct StrColumn {
    starts: Vec<u32>,
    bytes: Vec<u8>,
    garbage: usize,
}

/// Writes `len` as a varint: 1 byte below 128, 2 below 16,384, else 3.
fn put_len(out: &mut Vec<u8>, len: usize) {
    debug_assert!(len <= usize::from(u16::MAX));
    if len < 0x80 {
        out.push(len as u8);
    } else {
        out.push(0x80 | (len & 0x7f) as u8);
        out.push((len >> 7) as u8);
        if len >= 1 << 14 {
            // Third byte only for the rare long text value.
            let last = out.len() - 1;
            out[last] |= 0x80;
            out.push((len >> 14) as u8);
        }
    }
}

/// Reads a length written by [`put_len`]: (length, bytes used).
fn get_len(bytes: &[u8]) -> (usize, usize) {
    let b0 = usize::from(bytes[0]);
    if b0 < 0x80 {
        return (b0, 1);
    }
    let b1 = usize::from(bytes[1]);
    if b1 < 0x80 {
        return ((b0 & 0x7f) | (b1 << 7), 2);
    }
    (
        (b0 & 0x7f) | ((b1 & 0x7f) << 7) | (usize::from(bytes[2]) << 14),
        3,
    )
}

/// [`get_len`] for untrusted bytes: `None` when the length runs past the end.
fn try_get_len(bytes: &[u8]) -> Option<(usize, usize)> {
    let b0 = *bytes.first()?;
    if b0 < 0x80 {
        return Some((get_len(bytes).0, 1));
    }
    let b1 = *bytes.get(1)?;
    if b1 < 0x80 {
        return Some(get_len(bytes));
    }
    bytes.get(2)?;
    Some(get_len(bytes))
}

impl StrColumn {
    /// The string at `local`, or `None` when absent.
    #[inline]
    pub fn get(&self, local: usize) -> Option<&str> {
        let start = *self.starts.get(local)?;
        if start == NONE {
            return None;
        }
        let at = &self.bytes[start as usize..];
        let (len, used) = get_len(at);
        // Only valid UTF-8 is ever written, so this cannot fail.
        std::str::from_utf8(&at[used..used + len]).ok()
    }

    /// Whether the string at `local` is `key`, byte for byte (no UTF-8 check: the hot id check).
    #[inline]
    pub fn is(&self, local: usize, key: &str) -> bool {
        let Some(&start) = self.starts.get(local) else {
            return false;
        };
        if start == NONE {
            return false;
        }
        let at = &self.bytes[start as usize..];
        let (len, used) = get_len(at);
        len == key.len() && &at[used..used + len] == key.as_bytes()
    }

    /// Stores `value` at `local` ("" clears it).
    pub fn set(&mut self, local: usize, value: &str) {
        self.clear(local);
        if value.is_empty() {
            return;
        }
        if local >= self.starts.len() {
            let len = crate::store::column::grown_len(local);
            self.starts.reserve_exact(len - self.starts.len());
            self.starts.resize(len, NONE);
        }
        // Grow in steps of at most 64 KiB rather than doubling: a shard's strings reach a few MiB
        // and doubling would leave up to half of that unused.
        let needed = value.len() + 3;
        if self.bytes.capacity() - self.bytes.len() < needed {
            let step = (self.bytes.len() / 2).clamp(4096, GROW_STEP).max(needed);
            self.bytes.reserve_exact(step);
        }
        self.starts[local] = self.bytes.len() as u32;
        put_len(&mut self.bytes, value.len());
        self.bytes.extend_from_slice(value.as_bytes());
    }

    /// Erases the string at `local`, zeroing its bytes.
    pub fn clear(&mut self, local: usize) {
        let Some(start) = self.starts.get_mut(local) else {
            return;
        };
        if *start == NONE {
            return;
        }
        let s = *start as usize;
        *start = NONE;
        let (len, used) = get_len(&self.bytes[s..]);
        self.bytes[s..s + used + len].fill(0);
        self.garbage += used + len;
        if self.garbage > 64 * 1024 && self.garbage * 2 > self.bytes.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut bytes = Vec::with_capacity(self.bytes.len() - self.garbage);
        for start in self.starts.iter_mut().filter(|s| **s != NONE) {
            let s = *start as usize;
            let (len, used) = get_len(&self.bytes[s..]);
            *start = bytes.len() as u32;
            bytes.extend_from_slice(&self.bytes[s..s + used + len]);
        }
        self.bytes = bytes;
        self.garbage = 0;
    }

    /// The raw parts (offsets and bytes), compacted first so no erased bytes are written out.
    pub fn raw_parts(&mut self) -> (&[u32], &[u8]) {
        if self.garbage > 0 {
            self.compact();
        }
        (&self.starts, &self.bytes)
    }

    /// A column from parts written by [`StrColumn::raw_parts`], checking every offset and length
    /// stays inside the bytes and every string is UTF-8.
    pub fn from_raw_parts(starts: Vec<u32>, bytes: Vec<u8>) -> Result<StrColumn, String> {
        for (i, &start) in starts.iter().enumerate() {
            if start == NONE {
                continue;
            }
            let ok = bytes.get(start as usize..).is_some_and(|rest| {
                try_get_len(rest).is_some_and(|(len, used)| {
                    rest.get(used..used + len)
                        .is_some_and(|b| std::str::from_utf8(b).is_ok())
                })
            });
            if !ok {
                return Err(format!("string {i} lies outside its column"));
            }
        }
        Ok(StrColumn {
            starts,
            bytes,
            garbage: 0,
        })
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * 4 + self.bytes.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replace_clear_and_compact() {
        let mut c = StrColumn::default();
        c.set(3, "hello");
        assert_eq!(c.get(3), Some("hello"));
        assert_eq!(c.get(2), None);
        assert_eq!(c.get(100_000), None);
        c.set(3, "world!");
        assert_eq!(c.get(3), Some("world!"));
        assert!(!c.bytes.windows(5).any(|w| w == b"hello"), "old bytes are zeroed");
        let big = "x".repeat(60_000);
        for i in 0..10 {
            c.set(i, &big);
        }
        for i in 0..9 {
            c.clear(i);
        }
        assert!(c.bytes.len() < 200_000, "compacted after half became garbage");
        assert_eq!(c.get(9), Some(big.as_str()));
        assert_eq!(c.get(3), None);
    }

    #[test]
    fn raw_parts_round_trip_and_are_checked() {
        let mut c = StrColumn::default();
        c.set(0, "gone");
        c.set(2, "kept");
        c.set(5, &"é".repeat(100));
        c.clear(0);
        let long = "é".repeat(100);
        let (starts, bytes) = c.raw_parts();
        let (starts, bytes) = (starts.to_vec(), bytes.to_vec());
        assert!(
            !bytes.windows(4).any(|w| w == b"gone"),
            "erased strings are not written out"
        );
        let copy = StrColumn::from_raw_parts(starts.clone(), bytes.clone()).unwrap();
        assert_eq!(
            (copy.get(0), copy.get(2), copy.get(5)),
            (None, Some("kept"), Some(long.as_str()))
        );
        let mut bad = starts.clone();
        bad[2] = bytes.len() as u32 - 1;
        assert!(StrColumn::from_raw_parts(bad, bytes).is_err());
        assert!(
            StrColumn::from_raw_parts(vec![0], vec![0x85]).is_err(),
            "a cut-off length"
        );
        assert!(
            StrColumn::from_raw_parts(vec![0], vec![2, 0xff, 0xfe]).is_err(),
            "not UTF-8"
        );
    }

    #[test]
    fn lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 65_535] {
            let mut out = Vec::new();
            put_len(&mut out, len);
            out.extend_from_slice(&[0, 0]);
            assert_eq!(get_len(&out).0, len, "{len}");
        }
        let mut c = StrColumn::default();
        for (i, len) in [5usize, 200, 20_000].into_iter().enumerate() {
            let s = "é".repeat(len / 2);
            c.set(i, &s);
            assert_eq!(c.get(i), Some(s.as_str()));
        }
    }
}
