//! The monotone coupling between two uniform empirical measures on the line.

use burn::tensor::{Device, Int, Tensor};

/// How the `i`-th smallest of `n` points is matched to the `j`-th smallest of `m` points by the optimal
/// (monotone) coupling of two uniform measures, and with how much mass.
///
/// The quantile functions of the two measures are step functions with jumps at `k/n` and `k/m`; between
/// consecutive jumps of either, both are constant, so `W_p^p = Σ_k w_k |x_(i_k) − y_(j_k)|^p`. The
/// coupling depends on `n` and `m` only, never on the values, and is computed exactly in integers
/// (masses in units of `1/(n·m)`). For `n == m` it is the identity matching with mass `1/n` each.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QuantileCoupling {
    /// Rank in the sorted x of each matched pair.
    pub x_ranks: Vec<i64>,
    /// Rank in the sorted y of each matched pair.
    pub y_ranks: Vec<i64>,
    /// Mass carried by each matched pair; the masses sum to 1.
    pub masses: Vec<f64>,
}

impl QuantileCoupling {
    /// The coupling of `n` against `m` uniformly weighted points (both positive).
    pub fn new(n: usize, m: usize) -> Self {
        let total = (n as u128) * (m as u128);
        let (mut i, mut j, mut reached) = (0usize, 0usize, 0u128);
        let mut coupling = Self {
            x_ranks: Vec::with_capacity(n + m),
            y_ranks: Vec::with_capacity(n + m),
            masses: Vec::with_capacity(n + m),
        };
        while i < n && j < m {
            let x_end = (i as u128 + 1) * m as u128;
            let y_end = (j as u128 + 1) * n as u128;
            let end = x_end.min(y_end);
            coupling.x_ranks.push(i as i64);
            coupling.y_ranks.push(j as i64);
            coupling.masses.push((end - reached) as f64 / total as f64);
            reached = end;
            i += usize::from(x_end == end);
            j += usize::from(y_end == end);
        }
        coupling
    }

    /// The x ranks as an index tensor on `device`.
    pub fn x_rank_tensor(&self, device: &Device) -> Tensor<1, Int> {
        Tensor::from_data(self.x_ranks.as_slice(), device)
    }

    /// The y ranks as an index tensor on `device`.
    pub fn y_rank_tensor(&self, device: &Device) -> Tensor<1, Int> {
        Tensor::from_data(self.y_ranks.as_slice(), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sizes_give_the_identity_matching() {
        let c = QuantileCoupling::new(4, 4);
        assert_eq!(c.x_ranks, vec![0, 1, 2, 3]);
        assert_eq!(c.y_ranks, vec![0, 1, 2, 3]);
        assert!(c.masses.iter().all(|&w| w == 0.25));
    }

    #[test]
    fn two_against_three_splits_the_middle_point() {
        // x masses 1/2, 1/2; y masses 1/3 each: jumps at 1/3, 1/2, 2/3, 1.
        let c = QuantileCoupling::new(2, 3);
        assert_eq!(c.x_ranks, vec![0, 0, 1, 1]);
        assert_eq!(c.y_ranks, vec![0, 1, 1, 2]);
        let expected = [1.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 3.0];
        for (w, e) in c.masses.iter().zip(expected) {
            assert!((w - e).abs() < 1e-15);
        }
    }

    #[test]
    fn masses_sum_to_one_and_every_point_is_used() {
        for (n, m) in [(1, 7), (7, 1), (5, 8), (64, 48), (13, 13)] {
            let c = QuantileCoupling::new(n, m);
            let total: f64 = c.masses.iter().sum();
            assert!((total - 1.0).abs() < 1e-12);
            assert!(c.masses.iter().all(|&w| w > 0.0));
            assert!(c.masses.len() < n + m);
            assert_eq!(*c.x_ranks.last().unwrap() as usize, n - 1);
            assert_eq!(*c.y_ranks.last().unwrap() as usize, m - 1);
        }
    }
}
