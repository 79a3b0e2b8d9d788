//! Matrix products by the `gemm` crate (the AVX-512 / AVX2 / NEON micro-kernels flex calls too,
//! with its run-time dispatch), shared by the kernels that are built from products.
//!
//! `gemm` splits a product's rows and columns among threads, never the shared dimension, so every
//! output element is summed in the same order whatever the thread count.

/// Products below this many multiply-adds run on one thread.
pub(super) const PARALLEL_MACS: usize = 192 * 192 * 192;

/// Element types the kernels run on.
pub(super) trait Element:
    burn::tensor::Element
    + bytemuck::Pod
    + Default
    + PartialOrd
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Sub<Output = Self>
{
    const ONE: Self;

    /// `value` rounded to this type.
    fn from_real(value: f64) -> Self;

    /// `e` to the power of `self`.
    fn exp(self) -> Self;
}

impl Element for f32 {
    const ONE: Self = 1.0;

    fn from_real(value: f64) -> Self {
        value as f32
    }

    fn exp(self) -> Self {
        f32::exp(self)
    }
}

impl Element for f64 {
    const ONE: Self = 1.0;

    fn from_real(value: f64) -> Self {
        value
    }

    fn exp(self) -> Self {
        f64::exp(self)
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, each operand given by its row and column strides, on
/// all threads when it has [`PARALLEL_MACS`] multiply-adds.
///
/// # Safety
/// Every operand must cover the elements its strides address for the given sizes.
pub(super) unsafe fn product<T: Element>(
    [m, n, k]: [usize; 3],
    dst: (*mut T, isize, isize),
    accumulate: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
) {
    let parallel = m * n * k >= PARALLEL_MACS;
    // SAFETY: forwarded from the caller.
    unsafe { product_with(parallel, [m, n, k], dst, accumulate, lhs, rhs) }
}

/// [`product`] on all threads when `parallel`, on the calling thread otherwise.
///
/// # Safety
/// As for [`product`]; when `accumulate` is false `dst` is only written, so it may be memory
/// no value has been stored in yet.
pub(super) unsafe fn product_with<T: Element>(
    parallel: bool,
    [m, n, k]: [usize; 3],
    dst: (*mut T, isize, isize),
    accumulate: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
) {
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let alpha = if accumulate { T::ONE } else { T::default() };
    // SAFETY: the caller guarantees the operands' extents; `gemm` reads `dst` only when accumulating.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            alpha,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        )
    }
}
