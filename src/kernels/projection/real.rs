//! What the projection kernels share: the element types they run on, the choice of the best kernel
//! for the processor at run time, and the split of the shared dimension across threads.

use rayon::prelude::*;

use super::dot::{self, Range};
use super::panel::{self, PanelRange};

/// Below this many columns per piece, splitting along the shared dimension costs more than it saves.
const MIN_COLUMNS_PER_PIECE: usize = 2048;
/// At most this many pieces, whatever the dimension: enough to keep 16 cores busy.
const MAX_PIECES: usize = 32;

/// Floating-point element types the kernels run on.
pub(crate) trait Real:
    Copy + Default + Send + Sync + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    /// [`super::dot`]'s partial products over one range, with the best kernel for this processor.
    fn dot(range: Range<'_, Self>) -> Vec<Self>;

    /// [`super::panel`]'s partial products over one range, with the best kernel for this processor.
    fn panel(range: PanelRange<'_, Self>) -> Vec<Self>;
}

/// Implements [`Real`] for an element type with its AVX-512 and AVX2 + FMA kernels on x86-64.
macro_rules! real_with_kernels {
    ($elem:ty, $avx512:ident, $avx2:ident) => {
        impl Real for $elem {
            fn dot(range: Range<'_, Self>) -> Vec<Self> {
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the processor supports AVX-512F (checked just above).
                        return unsafe { dot::x86::$avx512(range) };
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the processor supports AVX2 and FMA (checked just above).
                        return unsafe { dot::x86::$avx2(range) };
                    }
                }
                dot::portable(range)
            }

            fn panel(range: PanelRange<'_, Self>) -> Vec<Self> {
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the processor supports AVX-512F (checked just above).
                        return unsafe { panel::x86::$avx512(range) };
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the processor supports AVX2 and FMA (checked just above).
                        return unsafe { panel::x86::$avx2(range) };
                    }
                }
                panel::portable(range)
            }
        }
    };
}

real_with_kernels!(f32, avx512_f32, avx2_f32);
real_with_kernels!(f64, avx512_f64, avx2_f64);

/// Runs `partial(start, end)` on each piece of `0..dim` and adds the equally long results in piece
/// order. The pieces depend on `dim` alone (at least [`MIN_COLUMNS_PER_PIECE`] columns each, at most
/// [`MAX_PIECES`] of them), never on the thread count, so the sum is the same bits on any machine.
pub(crate) fn split_columns<T: Real>(
    dim: usize,
    partial: impl Fn(usize, usize) -> Vec<T> + Sync,
) -> Vec<T> {
    let pieces = (dim / MIN_COLUMNS_PER_PIECE).clamp(1, MAX_PIECES);
    if pieces == 1 {
        return partial(0, dim);
    }
    let parts: Vec<Vec<T>> = (0..pieces)
        .into_par_iter()
        .map(|t| partial(t * dim / pieces, (t + 1) * dim / pieces))
        .collect();
    let mut parts = parts.into_iter();
    let mut total = parts.next().expect("at least two pieces");
    for part in parts {
        total.iter_mut().zip(part).for_each(|(t, p)| *t = *t + p);
    }
    total
}

#[cfg(test)]
pub(crate) mod tests {
    /// Columns that span several threads' ranges.
    pub(crate) const LONG: usize = 3 * super::MIN_COLUMNS_PER_PIECE + 17;

    /// The results of every kernel this processor can run (`portable` and `x86::…` of the calling
    /// module) on an f64 and an f32 range, widened to f64, each with the kernel's name.
    macro_rules! every_kernel {
        ($range64:expr, $range32:expr) => {{
            let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
            #[allow(unused_mut)]
            let mut results = vec![
                ("portable f64", portable($range64)),
                ("portable f32", widen(portable($range32))),
            ];
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: AVX2 and FMA are present (checked just above).
                    unsafe {
                        results.push(("avx2 f64", x86::avx2_f64($range64)));
                        results.push(("avx2 f32", widen(x86::avx2_f32($range32))));
                    }
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: AVX-512F is present (checked just above).
                    unsafe {
                        results.push(("avx512 f64", x86::avx512_f64($range64)));
                        results.push(("avx512 f32", widen(x86::avx512_f32($range32))));
                    }
                }
            }
            results
        }};
    }
    pub(crate) use every_kernel;
}
