//! Zeroed arrays of atomic words for the replica's big tables, on transparent huge pages where
//! the kernel offers them.
//!
//! A lookup in a 100 MB table of 4 KiB pages misses the TLB as well as the cache: the page walk
//! is a second wait before the slot's own. Aligned to 2 MiB and marked `MADV_HUGEPAGE`, the same
//! table needs about 50 TLB entries instead of 25,000. (The machine of BENCHMARKS.md grants no
//! huge pages, so its figures do not show the gain; see "The replica client" there.)

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

const HUGE: usize = 2 << 20;

/// An owned, zeroed `[AtomicU64]`.
pub struct Words {
    ptr: NonNull<AtomicU64>,
    len: usize,
    layout: Option<Layout>,
}

// SAFETY: `Words` owns its atomics like a `Box<[AtomicU64]>`, which is Send and Sync.
unsafe impl Send for Words {}
unsafe impl Sync for Words {}

impl Words {
    pub fn zeroed(len: usize) -> Words {
        let bytes = len * std::mem::size_of::<AtomicU64>();
        if bytes < HUGE {
            let boxed: Box<[AtomicU64]> = (0..len).map(|_| AtomicU64::new(0)).collect();
            let len = boxed.len();
            let ptr = NonNull::new(Box::into_raw(boxed) as *mut AtomicU64).expect("a box is not null");
            return Words {
                ptr,
                len,
                layout: None,
            };
        }
        let layout = Layout::from_size_align(bytes.next_multiple_of(HUGE), HUGE).expect("a valid layout");
        // SAFETY: the layout has a non-zero size; zeroed memory is a valid AtomicU64 array.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw as *mut AtomicU64) else {
            std::alloc::handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        // SAFETY: the range is the allocation just made; the advice only changes how it is paged.
        unsafe {
            libc::madvise(raw.cast(), layout.size(), libc::MADV_HUGEPAGE);
        }
        Words {
            ptr,
            len,
            layout: Some(layout),
        }
    }
}

impl std::ops::Deref for Words {
    type Target = [AtomicU64];
    fn deref(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` points to `len` initialized atomics owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        match self.layout {
            // SAFETY: allocated in `zeroed` with this layout.
            Some(layout) => unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) },
            // SAFETY: made from a `Box<[AtomicU64]>` of `len` in `zeroed`.
            None => unsafe {
                drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                )));
            },
        }
    }
}

impl std::fmt::Debug for Words {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Words({})", self.len)
    }
}
