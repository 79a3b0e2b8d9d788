//! Projection directions: unit vectors drawn uniformly on the sphere (independently, or as
//! orthonormal groups), or given by the user.

use burn::tensor::{DType, Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::OtError;

/// How far a user-given direction's norm may stray from 1 before it is rejected.
const UNIT_NORM_TOLERANCE: f64 = 1e-3;

/// A set of `L` unit directions in `R^d`, stored one direction per column: a `[d, L]` tensor, the
/// layout POT uses and the one the projection kernels read fastest (a row of it holds the `k`-th
/// coordinate of every direction).
///
/// Sampled directions are stored as drawn, with the factor that makes each one a unit vector: the
/// distances apply it to the `[n, L]` projections instead of to the `[d, L]` matrix.
#[derive(Clone, Debug)]
pub struct Directions {
    columns: Tensor<2>,
    scales: Option<Vec<f64>>,
}

impl Directions {
    /// Wraps a `[L, d]` tensor whose rows are unit vectors.
    ///
    /// Fails if the tensor is empty or a row's Euclidean norm differs from 1 by more than 1e-3.
    pub fn from_rows(rows: Tensor<2>) -> Result<Self, OtError> {
        Self::from_columns(rows.transpose())
    }

    /// Wraps a `[d, L]` tensor whose columns are unit vectors (POT's `projections` layout).
    ///
    /// Fails if the tensor is empty or a column's Euclidean norm differs from 1 by more than 1e-3.
    pub fn from_columns(columns: Tensor<2>) -> Result<Self, OtError> {
        let [dim, count] = columns.dims();
        if count == 0 || dim == 0 {
            return Err(OtError::EmptyDirections { count, dim });
        }
        let norms = columns
            .clone()
            .inner()
            .square()
            .sum_dim(0)
            .sqrt()
            .try_into_vec_as::<f64>()
            .map_err(|e| OtError::Backend(e.to_string()))?;
        if let Some((index, &norm)) = norms
            .iter()
            .enumerate()
            .find(|(_, norm)| norm.is_nan() || (**norm - 1.0).abs() > UNIT_NORM_TOLERANCE)
        {
            return Err(OtError::NotUnitDirection { index, norm });
        }
        Ok(Self {
            columns,
            scales: None,
        })
    }

    /// The unit directions as a `[d, L]` tensor, one per column.
    pub fn columns(&self) -> Tensor<2> {
        let columns = self.columns.clone();
        match &self.scales {
            None => columns,
            Some(scales) => {
                let row =
                    Tensor::<1>::from_data(scales.as_slice(), (&columns.device(), columns.dtype()));
                columns * row.reshape([1, scales.len()])
            }
        }
    }

    /// The unit directions as a `[L, d]` tensor, one per row.
    pub fn rows(&self) -> Tensor<2> {
        self.columns().transpose()
    }

    /// The number of directions `L`.
    pub fn count(&self) -> usize {
        self.columns.dims()[1]
    }

    /// The dimension `d` of the space the directions live in.
    pub fn dim(&self) -> usize {
        self.columns.dims()[0]
    }

    /// What each stored column is multiplied by to have unit norm (`None`: they have it already).
    pub(crate) fn scales(&self) -> Option<&[f64]> {
        self.scales.as_deref()
    }

    /// The stored `[d, L]` columns (see [`Directions::scales`]) moved to `device` and cast to
    /// `dtype` (a no-op when they already match).
    pub(crate) fn to_matching(&self, device: &Device, dtype: DType) -> Tensor<2> {
        let columns = self.columns.clone().to_device(device);
        if columns.dtype() == dtype {
            columns
        } else {
            columns.cast(dtype)
        }
    }
}

/// How a set of random directions is drawn.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionKind {
    /// Independent uniform unit vectors (the paper's and POT's).
    #[default]
    Random,
    /// Uniformly random orthonormal groups (as in UnifOrtho): the directions, taken in groups of
    /// at most `d/2`, are the Q factor of the independent draw's groups, so no two directions of a
    /// group probe the same part of the space.
    Orthogonal,
}

/// Draws directions uniformly on the unit sphere (normalised standard Gaussians).
///
/// Each call to [`DirectionSampler::sample`] returns fresh directions. The sampler owns its own
/// generator, seeded by the user and independent of any model's random state, so the directions of a
/// run are reproducible from the seed alone. Blocks of coordinates are generated in parallel, each
/// from its own sub-stream, so the result does not depend on the number of threads.
#[derive(Clone, Debug)]
pub struct DirectionSampler {
    seed: u64,
    draws: u64,
}

impl DirectionSampler {
    /// A sampler whose whole sequence of draws is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, draws: 0 }
    }

    /// A sampler that continues the sequence of `DirectionSampler::new(seed)` after `draws` draws
    /// (to resume a run exactly).
    pub fn resume(seed: u64, draws: u64) -> Self {
        Self { seed, draws }
    }

    /// How many sets of directions this sampler has drawn so far.
    pub fn draws(&self) -> u64 {
        self.draws
    }

    /// Draws `count` fresh unit directions in `R^dim`, stored as a `[dim, count]` tensor on `device`
    /// with element type `dtype` (`F32` or `F64`).
    pub fn sample(
        &mut self,
        dim: usize,
        count: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Directions, OtError> {
        if count == 0 || dim == 0 {
            return Err(OtError::EmptyDirections { count, dim });
        }
        if count.saturating_mul(dim) > super::MAX_DIRECTION_ELEMENTS {
            return Err(OtError::TooManyDirections { count, dim });
        }
        let draw_seed = mix(self.seed, self.draws);
        self.draws += 1;
        let (data, scales) = match dtype {
            DType::F64 => gaussian_columns::<f64>(draw_seed, dim, count),
            DType::F32 => gaussian_columns::<f32>(draw_seed, dim, count),
            other => return Err(OtError::UnsupportedDType(format!("{other:?}"))),
        };
        Ok(Directions {
            columns: Tensor::from_data(data, (device, dtype)),
            scales: Some(scales),
        })
    }

    /// Draws `count` fresh directions of the given kind (see [`DirectionSampler::sample`]). An
    /// orthogonal draw uses the same stream as a random one: it orthonormalises that draw's
    /// directions in groups of at most `max(1, dim / 2)`.
    pub fn sample_kind(
        &mut self,
        kind: DirectionKind,
        dim: usize,
        count: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Directions, OtError> {
        let independent = self.sample(dim, count, device, dtype)?;
        if kind == DirectionKind::Random {
            return Ok(independent);
        }
        let columns = independent.columns();
        let group = (dim / 2).max(1);
        let groups = (0..count)
            .step_by(group)
            .map(|start| orthonormalise(columns.clone().narrow(1, start, group.min(count - start))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Directions {
            columns: Tensor::cat(groups, 1),
            scales: None,
        })
    }
}

/// The Q factor of the thin QR factorisation of a full-rank `[d, k]` matrix, by CholeskyQR2: twice,
/// `R` is the Cholesky factor of the Gram matrix (computed in f64 on the host; `k` is small) and
/// `Q = A·R⁻¹`. `R`'s diagonal is positive, so the Q of a Gaussian matrix is uniformly distributed
/// over orthonormal frames; the second pass brings orthogonality to the element type's precision.
fn orthonormalise(matrix: Tensor<2>) -> Result<Tensor<2>, OtError> {
    let k = matrix.dims()[1];
    let (device, dtype) = (matrix.device(), matrix.dtype());
    let mut q = matrix;
    for _ in 0..2 {
        let gram = q
            .clone()
            .transpose()
            .matmul(q.clone())
            .try_into_vec_as::<f64>()
            .map_err(|e| OtError::Backend(e.to_string()))?;
        let inverse = upper_triangular_inverse(&cholesky_upper(&gram, k)?, k);
        let inverse = Tensor::<2>::from_data(TensorData::new(inverse, [k, k]), (&device, dtype));
        q = q.matmul(inverse);
    }
    Ok(q)
}

/// The upper-triangular `R` with positive diagonal and `RᵀR = gram` (row-major `k × k`).
fn cholesky_upper(gram: &[f64], k: usize) -> Result<Vec<f64>, OtError> {
    let mut r = vec![0.0f64; k * k];
    for j in 0..k {
        let pivot = gram[j * k + j] - (0..j).map(|i| r[i * k + j].powi(2)).sum::<f64>();
        if !(pivot > 0.0 && pivot.is_finite()) {
            return Err(OtError::Backend(format!(
                "drawn directions are numerically dependent (Cholesky pivot {pivot} at {j})"
            )));
        }
        let diagonal = pivot.sqrt();
        r[j * k + j] = diagonal;
        for c in j + 1..k {
            let dot: f64 = (0..j).map(|i| r[i * k + j] * r[i * k + c]).sum();
            r[j * k + c] = (gram[j * k + c] - dot) / diagonal;
        }
    }
    Ok(r)
}

/// The inverse of an upper-triangular `k × k` matrix with non-zero diagonal, by back substitution.
fn upper_triangular_inverse(r: &[f64], k: usize) -> Vec<f64> {
    let mut inverse = vec![0.0; k * k];
    for column in 0..k {
        for row in (0..=column).rev() {
            let identity = if row == column { 1.0 } else { 0.0 };
            let known: f64 = (row + 1..=column)
                .map(|m| r[row * k + m] * inverse[m * k + column])
                .sum();
            inverse[row * k + column] = (identity - known) / r[row * k + row];
        }
    }
    inverse
}

/// Element types the sampler produces, each with its Gaussian source.
trait SampledReal: Copy + Send + Sync {
    /// Fills `out` with standard normal samples, a function of `seed` alone.
    fn fill_gaussian(seed: u64, out: &mut [MaybeUninit<Self>]);
    /// Adds the squares of each column of the row-major `[_, sums.len()]` block to `sums` (f64).
    fn add_column_squares(block: &[Self], sums: &mut [f64]);
}

impl SampledReal for f64 {
    fn fill_gaussian(seed: u64, out: &mut [MaybeUninit<f64>]) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        for slot in out {
            slot.write(StandardNormal.sample(&mut rng));
        }
    }

    fn add_column_squares(block: &[f64], sums: &mut [f64]) {
        for row in block.chunks_exact(sums.len()) {
            for (sum, g) in sums.iter_mut().zip(row) {
                *sum += g * g;
            }
        }
    }
}

impl SampledReal for f32 {
    fn fill_gaussian(seed: u64, out: &mut [MaybeUninit<f32>]) {
        super::gaussian::fill_standard_normal(seed, out);
    }

    /// Sums 16 rows at a time in f32 (vector arithmetic; relative error below 1e-6), each partial
    /// sum then added in f64.
    fn add_column_squares(block: &[f32], sums: &mut [f64]) {
        let mut partial = vec![0.0f32; sums.len()];
        for rows in block.chunks(16 * sums.len()) {
            partial.fill(0.0);
            for row in rows.chunks_exact(sums.len()) {
                for (p, g) in partial.iter_mut().zip(row) {
                    *p += g * g;
                }
            }
            for (sum, &p) in sums.iter_mut().zip(&partial) {
                *sum += f64::from(p);
            }
        }
    }
}

/// Rows of the `[dim, count]` matrix drawn from one sub-stream.
const ROWS_PER_STREAM: usize = 256;

/// `count` columns of `dim` standard Gaussian samples, row-major `[dim, count]`, and the inverse of
/// each column's norm. Each block of [`ROWS_PER_STREAM`] rows comes from its own generator, seeded
/// by `(draw_seed, block)`. The norms are accumulated in f64 whatever the element type.
fn gaussian_columns<T: SampledReal + burn::tensor::Element>(
    draw_seed: u64,
    dim: usize,
    count: usize,
) -> (TensorData, Vec<f64>) {
    let len = dim * count;
    let block_len = ROWS_PER_STREAM * count;
    let mut out = Vec::with_capacity(len);
    let block_squares: Vec<Vec<f64>> = out.spare_capacity_mut()[..len]
        .par_chunks_mut(block_len)
        .enumerate()
        .map(|(block, chunk)| {
            T::fill_gaussian(mix(draw_seed, block as u64), chunk);
            // SAFETY: `fill_gaussian` wrote every element of the chunk.
            let gaussian = unsafe { &*(chunk as *const [MaybeUninit<T>] as *const [T]) };
            let mut squares = vec![0.0f64; count];
            T::add_column_squares(gaussian, &mut squares);
            squares
        })
        .collect();
    // Added in block order, so the norms do not depend on how the blocks were spread over threads.
    let mut squared_norms = vec![0.0f64; count];
    for squares in &block_squares {
        squared_norms
            .iter_mut()
            .zip(squares)
            .for_each(|(t, p)| *t += p);
    }
    // SAFETY: every one of the first `len` elements was written just above (the blocks cover them).
    unsafe { out.set_len(len) };
    let scales = squared_norms.iter().map(|s| s.sqrt().recip()).collect();
    (TensorData::new(out, [dim, count]), scales)
}

/// Combines two words into a well-mixed seed (SplitMix64's finaliser), so that nearby inputs give
/// unrelated streams.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;

    fn rows_of(directions: &Directions) -> Vec<f64> {
        directions.rows().try_into_vec_as::<f64>().unwrap()
    }

    #[test]
    fn sampled_rows_are_unit_vectors() {
        let mut sampler = DirectionSampler::new(7);
        for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
            // 600 rows: three sub-streams, the last one partial.
            let dirs = sampler.sample(600, 12, &default_device(), dtype).unwrap();
            assert_eq!((dirs.count(), dirs.dim()), (12, 600));
            for row in rows_of(&dirs).chunks(600) {
                let norm: f64 = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!((norm - 1.0).abs() < tolerance, "{dtype:?} norm {norm}");
            }
        }
    }

    #[test]
    fn same_seed_same_sequence_and_each_draw_is_fresh() {
        let device = default_device();
        let mut a = DirectionSampler::new(3);
        let mut b = DirectionSampler::new(3);
        let a1 = rows_of(&a.sample(8, 4, &device, DType::F64).unwrap());
        let a2 = rows_of(&a.sample(8, 4, &device, DType::F64).unwrap());
        let b1 = rows_of(&b.sample(8, 4, &device, DType::F64).unwrap());
        assert_eq!(a1, b1);
        assert_ne!(a1, a2);
        assert_eq!(a.draws(), 2);
        let other = rows_of(
            &DirectionSampler::new(4)
                .sample(8, 4, &device, DType::F64)
                .unwrap(),
        );
        assert_ne!(a1, other);
    }

    #[test]
    fn the_draw_does_not_depend_on_the_thread_count() {
        // Several 256-row blocks, a partial last one, and an L that leaves a partial SIMD step.
        let draw = |threads: usize, dtype: DType| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let dirs = DirectionSampler::new(5)
                    .sample(1000, 7, &default_device(), dtype)
                    .unwrap();
                rows_of(&dirs)
            })
        };
        for dtype in [DType::F32, DType::F64] {
            assert_eq!(draw(1, dtype), draw(3, dtype), "{dtype:?}");
        }
    }

    #[test]
    fn directions_cover_the_sphere_without_bias() {
        // The mean of many uniform unit vectors is near 0, and each coordinate's second moment is 1/d.
        let (dim, count) = (4, 20_000);
        for kind in [DirectionKind::Random, DirectionKind::Orthogonal] {
            let dirs = DirectionSampler::new(11)
                .sample_kind(kind, dim, count, &default_device(), DType::F64)
                .unwrap();
            let values = rows_of(&dirs);
            for c in 0..dim {
                let coordinate = values.iter().skip(c).step_by(dim);
                let (sum, sum_sq) = coordinate.fold((0.0, 0.0), |(s, q), v| (s + v, q + v * v));
                assert!((sum / count as f64).abs() < 0.02, "{kind:?}");
                assert!(
                    (sum_sq / count as f64 - 1.0 / dim as f64).abs() < 0.01,
                    "{kind:?}"
                );
            }
        }
    }

    /// The Gram matrix of the directions, row-major `[L, L]`.
    fn gram(directions: &Directions) -> Vec<f64> {
        let columns = directions.columns();
        columns
            .clone()
            .transpose()
            .matmul(columns)
            .try_into_vec_as::<f64>()
            .unwrap()
    }

    #[test]
    fn orthogonal_draws_are_orthonormal_groups_of_the_same_stream() {
        let device = default_device();
        for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            // d = 600, L = 50: one group, every pair orthogonal.
            let dirs = DirectionSampler::new(9)
                .sample_kind(DirectionKind::Orthogonal, 600, 50, &device, dtype)
                .unwrap();
            for (index, value) in gram(&dirs).into_iter().enumerate() {
                let identity = if index / 50 == index % 50 { 1.0 } else { 0.0 };
                assert!((value - identity).abs() < tolerance, "{dtype:?} {value}");
            }
        }
        // d = 6, L = 7: groups of 3, 3 and 1; orthonormal within a group only.
        let dirs = DirectionSampler::new(9)
            .sample_kind(DirectionKind::Orthogonal, 6, 7, &device, DType::F64)
            .unwrap();
        let gram = gram(&dirs);
        for i in 0..7 {
            for j in 0..7 {
                let value = gram[i * 7 + j];
                if i == j {
                    assert!((value - 1.0).abs() < 1e-12);
                } else if i / 3 == j / 3 {
                    assert!(value.abs() < 1e-12, "({i}, {j}): {value}");
                }
            }
        }
        // Q's first column is the independent draw's first direction (R's diagonal is positive).
        let mut random = DirectionSampler::new(9);
        let mut orthogonal = DirectionSampler::new(9);
        let a = rows_of(&random.sample(6, 7, &device, DType::F64).unwrap());
        let b = rows_of(
            &orthogonal
                .sample_kind(DirectionKind::Orthogonal, 6, 7, &device, DType::F64)
                .unwrap(),
        );
        assert!(
            a[..6]
                .iter()
                .zip(&b[..6])
                .all(|(x, y)| (x - y).abs() < 1e-12)
        );
        assert_eq!((random.draws(), orthogonal.draws()), (1, 1));
    }

    #[test]
    fn user_directions_must_be_unit_vectors() {
        let device = default_device();
        let bad = Tensor::<2>::from_data([[1.0, 0.0], [0.5, 0.5]], &device);
        match Directions::from_rows(bad) {
            Err(OtError::NotUnitDirection { index: 1, .. }) => {}
            other => panic!("expected a norm error, got {other:?}"),
        }
        let columns = Tensor::<2>::from_data([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]], &device);
        let dirs = Directions::from_columns(columns).unwrap();
        assert_eq!((dirs.count(), dirs.dim()), (3, 2));
    }
}
