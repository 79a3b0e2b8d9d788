//! Output buffers the kernels fill in parallel without a zero-filling pass on the calling thread.
//!
//! A `vec![0; n]` of a feature map is one single-threaded pass over memory that the kernel then
//! writes again; while the calling thread clears it, the workers wait (about 4 ms of each step of
//! the width-16 reference epoch, BENCHMARKS.md "CPU speed, session 22"). The kernels here either
//! write every element themselves ([`written`]) or clear each task's part on the worker that fills
//! it, just before, while it is in that core's cache ([`zeroed_in_parallel`]).

use std::mem::MaybeUninit;

use bytemuck::Zeroable;
use rayon::prelude::*;

/// A vector of `len` values, all of them stored by `write` into the buffer it is given, without
/// filling the buffer with zeros first.
///
/// # Safety
/// `write` must store a value in each of the `len` elements its pointer addresses.
pub(super) unsafe fn written<T>(len: usize, write: impl FnOnce(*mut T)) -> Vec<T> {
    let mut values = Vec::with_capacity(len);
    write(values.as_mut_ptr());
    // SAFETY: the capacity is `len`, and the caller guarantees every element was stored.
    unsafe { values.set_len(len) };
    values
}

/// A vector of `len` values filled by parallel tasks, one per chunk of `chunk_len` values (the
/// last one shorter): `fill(index, chunk)` gets chunk `index` set to zeros on its own thread, so
/// that it may accumulate into it.
pub(super) fn zeroed_in_parallel<T: Zeroable + Send>(
    len: usize,
    chunk_len: usize,
    fill: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let mut values = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk_len.max(1))
        .enumerate()
        .for_each(|(index, chunk)| fill(index, zeroed(chunk)));
    // SAFETY: the chunks cover the first `len` elements, and `zeroed` stored each of them.
    unsafe { values.set_len(len) };
    values
}

/// `chunk` set to zeros (a valid value of `T`), as initialised values.
pub(super) fn zeroed<T: Zeroable>(chunk: &mut [MaybeUninit<T>]) -> &mut [T] {
    chunk.fill_with(|| MaybeUninit::new(T::zeroed()));
    // SAFETY: every element was just initialised, and `MaybeUninit<T>` has the layout of `T`.
    unsafe { std::slice::from_raw_parts_mut(chunk.as_mut_ptr().cast(), chunk.len()) }
}

/// The start of a buffer that parallel tasks write through, each its own elements.
#[derive(Clone, Copy)]
pub(super) struct Destination<T>(*mut T);

// SAFETY: the tasks given a `Destination` write disjoint elements of a buffer that outlives them.
unsafe impl<T: Send> Send for Destination<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Destination<T> {}

impl<T> Destination<T> {
    /// The buffer that starts at `start`.
    pub(super) fn of(start: *mut T) -> Self {
        Self(start)
    }

    /// A pointer to element `index` (computing it accesses nothing).
    pub(super) fn at(self, index: usize) -> *mut T {
        self.0.wrapping_add(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_starts_from_zeros_and_keeps_what_its_task_adds() {
        for (len, chunk_len) in [(0, 4), (1, 4), (10, 3), (12, 4), (7, 0)] {
            let values = zeroed_in_parallel(len, chunk_len, |index, chunk: &mut [f32]| {
                assert!(chunk.iter().all(|&v| v == 0.0));
                for (offset, value) in chunk.iter_mut().enumerate() {
                    *value += (index * 100 + offset) as f32;
                }
            });
            let step = chunk_len.max(1);
            let expected: Vec<f32> = (0..len)
                .map(|i| ((i / step) * 100 + i % step) as f32)
                .collect();
            assert_eq!(values, expected, "len {len}, chunks of {chunk_len}");
        }
    }

    #[test]
    fn zeroed_initialises_a_reused_buffer() {
        let mut buffer = vec![MaybeUninit::new(7i32); 5];
        assert_eq!(zeroed(&mut buffer), &[0; 5]);
    }
}
