//! Tuning of the allocator that `segmentd` and its benchmarks install (mimalloc).

/// How long mimalloc keeps freed memory before handing it back to the system. Its default, one
/// second, returned the memory of each batch a bulk load decodes between batches, to be faulted
/// in (and zeroed) again for the next: thousands of page faults per million customers.
pub const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (mimalloc.h), which the Rust bindings
/// do not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`] unless `MIMALLOC_PURGE_DELAY` says
/// otherwise. Call it first thing in `main`, before any other thread exists.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mimalloc's option setter is not thread-safe; the caller runs it before any other
        // thread starts.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}
