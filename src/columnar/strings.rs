//! A shard's column of strings (customer ids, e-mails, text attributes): byte chunks holding
//! each string behind a varint length, and one start offset per ordinal. Reading a string touches
//! the offset and then one run of bytes (two cache lines at most for ids), which keeps the
//! request-time id check cheap. Bytes live in chunks of at most 64 KiB that are never moved, so
//! a shard's strings grow without copying what is already written and with no more slack than the
//! last chunk's free tail. A replaced or erased string is zeroed at once (an erased customer's
//! e-mail does not linger in memory) and the column is compacted when half is garbage.

/// Marks an ordinal with no string.
const NONE: u32 = u32::MAX;
/// A start offset is `chunk << CHUNK_BITS | offset in the chunk`.
const CHUNK_BITS: u32 = 16;
/// Most bytes of one chunk; a string and its length always fit in one.
const CHUNK: usize = 1 << CHUNK_BITS;
/// The first chunk starts this small and doubles up to [`CHUNK`], so a sparse column stays small.
const FIRST_CHUNK: usize = 4096;

/// Longest string a column holds, in bytes (text values are at most 4,096).
pub const MAX_STRING: usize = CHUNK - 3;

/// Strings of one shard, indexed by local ordinal. Each string is at most [`MAX_STRING`] bytes.
#[derive(Debug, Default, Clone)]
pub struct StrColumn {
    starts: Vec<u32>,
    chunks: Vec<Vec<u8>>,
    /// Bytes written to the chunks, and how many of them belong to erased strings.
    used: usize,
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
    /// The bytes from `start` to the end of its chunk.
    #[inline]
    fn at(&self, start: u32) -> &[u8] {
        let chunk = &self.chunks[(start >> CHUNK_BITS) as usize];
        &chunk[(start as usize) & (CHUNK - 1)..]
    }

    /// The string at `local`, or `None` when absent.
    #[inline]
    pub fn get(&self, local: usize) -> Option<&str> {
        let start = *self.starts.get(local)?;
        if start == NONE {
            return None;
        }
        let at = self.at(start);
        let (len, used) = get_len(at);
        let bytes = &at[used..used + len];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: a live start points at bytes copied from a `&str` by `push` (from `set`,
        // `compact`, or `from_raw_parts` after its UTF-8 check), never changed until the start is
        // cleared. Checking again on every read cost the writer a twentieth of its time (map
        // growth rereads every stored key).
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
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
        let at = self.at(start);
        let (len, used) = get_len(at);
        len == key.len() && &at[used..used + len] == key.as_bytes()
    }

    /// Asks the processor for the start offset of `local` (`stage` 0) or, once that is near,
    /// the bytes it points at (`stage` 1). A hint only: never a wrong answer.
    #[inline]
    pub fn prefetch(&self, local: usize, stage: u8) {
        match stage {
            0 => crate::columnar::prefetch(self.starts.as_ptr().wrapping_add(local)),
            _ => {
                if let Some(&start) = self.starts.get(local)
                    && start != NONE
                {
                    crate::columnar::prefetch(self.at(start).as_ptr());
                }
            }
        }
    }

    /// Stores `value` at `local` ("" clears it).
    pub fn set(&mut self, local: usize, value: &str) {
        self.clear(local);
        if value.is_empty() {
            return;
        }
        if local >= self.starts.len() {
            let len = crate::columnar::column::grown_len(local);
            self.starts.reserve_exact(len - self.starts.len());
            self.starts.resize(len, NONE);
        }
        self.starts[local] = self.push(value);
    }

    /// Writes `value` behind its length where it fits; returns its start.
    fn push(&mut self, value: &str) -> u32 {
        assert!(value.len() <= MAX_STRING, "a string longer than a column holds");
        let needed = value.len() + 3;
        let fits = self.chunks.last().is_some_and(|c| c.len() + needed <= CHUNK);
        if !fits {
            let size = if self.chunks.is_empty() {
                FIRST_CHUNK.max(needed)
            } else {
                CHUNK
            };
            self.chunks.push(Vec::with_capacity(size));
        }
        let index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[index];
        if chunk.capacity() - chunk.len() < needed {
            // Only the first chunk grows (doubling up to a full chunk); later ones are made full.
            let target = (chunk.capacity() * 2).max(chunk.len() + needed).min(CHUNK);
            chunk.reserve_exact(target - chunk.len());
        }
        let start = (index << CHUNK_BITS | chunk.len()) as u32;
        let before = chunk.len();
        put_len(chunk, value.len());
        chunk.extend_from_slice(value.as_bytes());
        self.used += chunk.len() - before;
        start
    }

    /// Erases the string at `local`, zeroing its bytes.
    pub fn clear(&mut self, local: usize) {
        let Some(start) = self.starts.get_mut(local) else {
            return;
        };
        if *start == NONE {
            return;
        }
        let s = *start;
        *start = NONE;
        let chunk = &mut self.chunks[(s >> CHUNK_BITS) as usize];
        let at = (s as usize) & (CHUNK - 1);
        let (len, used) = get_len(&chunk[at..]);
        chunk[at..at + used + len].fill(0);
        self.garbage += used + len;
        if self.garbage > 64 * 1024 && self.garbage * 2 > self.used {
            self.compact();
        }
    }

    /// Rewrites the live strings into fresh chunks, in ordinal order.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.chunks);
        self.used = 0;
        self.garbage = 0;
        for i in 0..self.starts.len() {
            let start = self.starts[i];
            if start == NONE {
                continue;
            }
            let chunk = &old[(start >> CHUNK_BITS) as usize];
            let at = (start as usize) & (CHUNK - 1);
            let (len, used) = get_len(&chunk[at..]);
            let value =
                std::str::from_utf8(&chunk[at + used..at + used + len]).expect("only UTF-8 is written");
            self.starts[i] = self.push(value);
        }
    }

    /// The column as one run of bytes and offsets into it (what snapshots hold), with no erased
    /// bytes in it.
    pub fn raw_parts(&self) -> (Vec<u32>, Vec<u8>) {
        let mut bytes = Vec::with_capacity(self.used - self.garbage);
        let starts = self
            .starts
            .iter()
            .map(|&start| {
                if start == NONE {
                    return NONE;
                }
                let at = self.at(start);
                let (len, used) = get_len(at);
                let flat = bytes.len() as u32;
                bytes.extend_from_slice(&at[..used + len]);
                flat
            })
            .collect();
        (starts, bytes)
    }

    /// A column from parts written by [`StrColumn::raw_parts`], checking every offset and length
    /// stays inside the bytes and every string is UTF-8.
    pub fn from_raw_parts(starts: Vec<u32>, bytes: Vec<u8>) -> Result<StrColumn, String> {
        let mut column = StrColumn {
            starts: vec![NONE; starts.len()],
            ..StrColumn::default()
        };
        for (i, &start) in starts.iter().enumerate() {
            if start == NONE {
                continue;
            }
            let value = bytes.get(start as usize..).and_then(|rest| {
                let (len, used) = try_get_len(rest)?;
                std::str::from_utf8(rest.get(used..used + len)?).ok()
            });
            match value {
                Some(value) if value.len() > MAX_STRING => {
                    return Err(format!("string {i} is longer than {MAX_STRING} bytes"));
                }
                Some("") => {}
                Some(value) => column.starts[i] = column.push(value),
                None => return Err(format!("string {i} lies outside its column")),
            }
        }
        Ok(column)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * 4
            + self.chunks.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.chunks.iter().map(Vec::capacity).sum::<usize>()
    }

    /// Every byte of the chunks (tests: erased strings are zeroed).
    #[cfg(test)]
    fn all_bytes(&self) -> Vec<u8> {
        self.chunks.concat()
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
        assert!(
            !c.all_bytes().windows(5).any(|w| w == b"hello"),
            "old bytes are zeroed"
        );
        let big = "x".repeat(60_000);
        for i in 0..10 {
            c.set(i, &big);
        }
        for i in 0..9 {
            c.clear(i);
        }
        assert!(c.used < 200_000, "compacted after half became garbage");
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
    fn many_chunks_keep_every_string() {
        let mut c = StrColumn::default();
        let value = |i: usize| format!("customer-{i}-{}", "x".repeat(i % 97));
        for i in 0..20_000 {
            c.set(i, &value(i));
        }
        assert!(c.chunks.len() > 5, "spread over chunks");
        assert!(c.chunks.iter().all(|ch| ch.len() <= CHUNK));
        for i in (0..20_000).step_by(7) {
            c.set(i, &value(i + 1));
        }
        let (starts, bytes) = c.raw_parts();
        let copy = StrColumn::from_raw_parts(starts, bytes).unwrap();
        for i in 0..20_000 {
            let want = if i % 7 == 0 { value(i + 1) } else { value(i) };
            assert_eq!(c.get(i), Some(want.as_str()));
            assert_eq!(copy.get(i), Some(want.as_str()));
            assert!(copy.is(i, &want));
        }
        // Erasing most of it compacts.
        for i in 0..19_000 {
            c.clear(i);
        }
        assert!(c.used - c.garbage < 100_000 && c.garbage * 2 <= c.used);
        assert_eq!(c.get(19_500), Some(value(19_500).as_str()));
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
