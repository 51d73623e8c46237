//! A shard's column of strings (customer ids, e-mails, text attributes): one byte buffer with a
//! start and a length per ordinal. A replaced or erased string is zeroed at once (an erased
//! customer's e-mail does not linger in memory) and the buffer is compacted when half is garbage.

/// Strings of one shard, indexed by local ordinal. Each string is at most 65,535 bytes.
#[derive(Debug, Default, Clone)]
pub struct StrColumn {
    starts: Vec<u32>,
    lens: Vec<u16>,
    bytes: Vec<u8>,
    garbage: usize,
}

impl StrColumn {
    /// The string at `local`, or `None` when absent or empty.
    pub fn get(&self, local: usize) -> Option<&str> {
        let len = usize::from(*self.lens.get(local)?);
        if len == 0 {
            return None;
        }
        let start = self.starts[local] as usize;
        // Only valid UTF-8 is ever written, so this cannot fail.
        std::str::from_utf8(&self.bytes[start..start + len]).ok()
    }

    /// Stores `value` at `local` ("" clears it).
    pub fn set(&mut self, local: usize, value: &str) {
        debug_assert!(value.len() <= usize::from(u16::MAX));
        self.clear(local);
        if value.is_empty() {
            return;
        }
        if local >= self.lens.len() {
            let len = crate::store::column::grown_len(local);
            self.lens.resize(len, 0);
            self.starts.resize(len, 0);
        }
        self.starts[local] = self.bytes.len() as u32;
        self.lens[local] = value.len() as u16;
        self.bytes.extend_from_slice(value.as_bytes());
    }

    /// Erases the string at `local`, zeroing its bytes.
    pub fn clear(&mut self, local: usize) {
        let Some(len) = self.lens.get_mut(local) else {
            return;
        };
        let n = usize::from(*len);
        if n == 0 {
            return;
        }
        *len = 0;
        let start = self.starts[local] as usize;
        self.bytes[start..start + n].fill(0);
        self.garbage += n;
        if self.garbage > 64 * 1024 && self.garbage * 2 > self.bytes.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut bytes = Vec::with_capacity(self.bytes.len() - self.garbage);
        for (start, &len) in self.starts.iter_mut().zip(&self.lens) {
            if len > 0 {
                let s = *start as usize;
                let new_start = bytes.len() as u32;
                bytes.extend_from_slice(&self.bytes[s..s + usize::from(len)]);
                *start = new_start;
            }
        }
        self.bytes = bytes;
        self.garbage = 0;
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * 4 + self.lens.capacity() * 2 + self.bytes.capacity()
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
}
