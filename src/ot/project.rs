//! Projecting point clouds on directions: the one dense product of the distances.

use burn::tensor::Tensor;
use rayon::prelude::*;

/// Below this many shared columns per slice, splitting a product across threads costs more than it
/// saves.
const MIN_COLUMNS_PER_SLICE: usize = 1024;

/// The projections of `points` (`[n, d]`) on each row of `rows` (`[L, d]`): `[n, L]`.
///
/// burn's CPU matmul runs on one thread when the output is as narrow as `[n, L]`, so the product is
/// split along the shared dimension `d`: one slice per thread, multiplied in parallel, then summed.
/// At n = 128, L = 50, d = 16384 this is 1.8x faster on two cores than one matmul.
pub(crate) fn project(points: Tensor<2>, rows: Tensor<2>) -> Tensor<2> {
    let dim = points.dims()[1];
    let slices = rayon::current_num_threads()
        .min(dim / MIN_COLUMNS_PER_SLICE)
        .max(1);
    if slices == 1 {
        return points.matmul(rows.transpose());
    }
    let bounds: Vec<(usize, usize)> = (0..slices)
        .map(|s| (s * dim / slices, (s + 1) * dim / slices))
        .collect();
    bounds
        .into_par_iter()
        .map(|(start, end)| {
            let part = points.clone().narrow(1, start, end - start);
            part.matmul(rows.clone().narrow(1, start, end - start).transpose())
        })
        .reduce_with(|a, b| a + b)
        .expect("at least one slice")
}

/// The projections of `points` (`[n, d]`) on one `direction` (`[1, d]`): `[n, 1]`.
///
/// Written as a broadcast product and a row sum rather than a matmul: its backward is then a
/// broadcast product too, where flex's matmul backward would form the rank-1 gradient `[n, 1] × [1, d]`
/// as a K = 1 product, about ten times slower.
pub(crate) fn project_on(points: Tensor<2>, direction: Tensor<2>) -> Tensor<2> {
    (points * direction).sum_dim(1)
}
