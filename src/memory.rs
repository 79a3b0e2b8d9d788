//! The allocator that lacoot's binary and benchmarks install, and its setting for training's large,
//! short-lived tensors.

use std::ffi::{c_int, c_long};

/// mimalloc. With the system allocator every large tensor is a fresh `mmap` whose pages fault in
/// on first touch, which cost more than the arithmetic on the project's machine (max-sliced
/// forward + backward at d = 16384: 10.5 ms with the system allocator, 5.2 ms with mimalloc).
pub use mimalloc::MiMalloc as Allocator;

unsafe extern "C" {
    /// mimalloc's `mi_option_set`, from the library that [`Allocator`] links.
    fn mi_option_set(option: c_int, value: c_long);
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same index in mimalloc 2 and 3;
/// libmimalloc-sys names its neighbours, 14 and 16, but not this one).
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// Makes [`Allocator`] keep freed memory for reuse instead of returning it to the system 10 ms
/// later. A training step frees and reallocates feature maps of tens of MB; returned memory comes
/// back as fresh pages that the kernel zeroes on first touch (22 % of a MobileNetV2 step in a
/// `perf` profile; the step went from 8.51 s to 6.57 s). The process keeps its peak memory instead.
pub fn keep_freed_memory() {
    // SAFETY: `mi_option_set` stores the value in mimalloc's option table; -1 ("never purge") is a
    // documented value of this option, and the call is valid at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
