//! The ascending order of each column of a matrix: the sort of the distances.
//!
//! `column_order(values)` returns, for a `[n, L]` matrix, the `[n, L]` row indices that sort each
//! column (ties in row order). The distances sort the `n` projections of a point cloud on each of
//! their `L` directions, and gather both clouds with these indices.
//!
//! - on `flex`, the columns are sorted on the host in parallel, as integer keys (a float's bits,
//!   the magnitude flipped for negative values, order like the float);
//! - on the cubecl backends (wgpu, cuda), a CubeCL kernel ranks every value against its column on
//!   the device: one thread per value, `n` comparisons each, so that a training step never reads
//!   its projections back (burn 0.22's `argsort` sorts on the host on every GPU backend);
//! - elsewhere, burn's `argsort`.
//!
//! The order carries no gradient: the distances gather the projections with it, and the gathers
//! carry the gradient.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Int, IntDType, Tensor, TensorData};
use rayon::prelude::*;

/// The order of the values of each column, implemented per backend.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait ColumnOrderOps: Backend {
    /// The row indices that sort each column of `values` (`[n, L]`) in ascending order, as
    /// integers of type `out_dtype`.
    fn column_order(values: FloatTensor<Self>, out_dtype: IntDType) -> IntTensor<Self> {
        Self::float_argsort(values, 0, false, out_dtype)
    }
}

/// The row indices that sort each column of `values` (`[n, L]`) in ascending order; ties keep
/// their row order on the cubecl backends. Without a graph.
pub fn column_order(values: Tensor<2>) -> Tensor<2, Int> {
    let out_dtype = values.device().settings().int_dtype;
    Tensor::from_dispatch(<Dispatch as ColumnOrderOps>::column_order(
        values.into_dispatch(),
        out_dtype,
    ))
}

impl ColumnOrderOps for Flex {
    fn column_order(values: FlexTensor, out_dtype: IntDType) -> FlexTensor {
        let order = match values.dtype() {
            DType::F32 => host_order(&values, |v: f32| f64::from(v)),
            DType::F64 => host_order(&values, |v: f64| v),
            _ => return Flex::float_argsort(values, 0, false, out_dtype),
        };
        let [n, count] = [values.shape()[0], values.shape()[1]];
        let order = FlexTensor::from_data(TensorData::new(order, [n, count]));
        if order.dtype() == DType::from(out_dtype) {
            order
        } else {
            <Flex as burn::backend::ops::IntTensorOps<Flex>>::int_cast(order, out_dtype)
        }
    }
}

/// Each column's ascending order, the columns sorted in parallel, as `i64` row indices laid out
/// like `values`.
fn host_order<T>(values: &FlexTensor, widen: impl Fn(T) -> f64 + Sync) -> Vec<i64>
where
    T: burn::tensor::Element + bytemuck::Pod + Send + Sync,
{
    let (n, count) = (values.shape()[0], values.shape()[1]);
    let values = values.to_contiguous();
    let values = values
        .as_slice::<T>()
        .expect("contiguous storage of the checked type");
    let flip = |bits: i64| bits ^ (((bits >> 63) as u64) >> 1) as i64;
    let columns: Vec<Vec<i64>> = (0..count)
        .into_par_iter()
        .map(|column| {
            let mut keyed: Vec<(i64, i64)> = (0..n)
                .map(|row| {
                    let value = widen(values[row * count + column]);
                    (flip(value.to_bits() as i64), row as i64)
                })
                .collect();
            keyed.sort_unstable();
            keyed.into_iter().map(|(_, row)| row).collect()
        })
        .collect();
    let mut order = vec![0; n * count];
    for (column, rows) in columns.iter().enumerate() {
        for (rank, &row) in rows.iter().enumerate() {
            order[rank * count + column] = row;
        }
    }
    order
}

impl<B: Backend + ColumnOrderOps, C: CheckpointStrategy> ColumnOrderOps for Autodiff<B, C> {
    fn column_order(values: FloatTensor<Self>, out_dtype: IntDType) -> IntTensor<Self> {
        B::column_order(values.into_primitive(), out_dtype)
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube {
    //! The rank kernel of the cubecl backends.

    use burn::backend::Cube;
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn::tensor::{DType, IntDType, Shape};
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::ops::numeric::zeros_client;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::{calculate_cube_count_elemwise, prelude::*};

    use super::ColumnOrderOps;

    /// One thread per value: its rank in its column is the number of values below it, plus the
    /// equal ones in earlier rows; the thread writes its row index at that rank.
    #[cube(launch_unchecked, address_type = "dynamic")]
    fn rank_columns_kernel<F: Float, I: Int>(
        values: &Tensor<F>,
        order: &mut Tensor<I>,
        rows: usize,
        columns: usize,
        #[define(F, I)] _dtypes: [ElemType; 2],
    ) {
        let position = ABSOLUTE_POS;
        if position >= rows * columns {
            terminate!();
        }
        let row = position / columns;
        let column = position % columns;
        let value = values[position];
        let mut rank = 0usize;
        for other in 0..rows {
            let candidate = values[other * columns + column];
            if candidate < value || (candidate == value && other < row) {
                rank += 1;
            }
        }
        order[rank * columns + column] = I::cast_from(row);
    }

    impl ColumnOrderOps for Cube {
        fn column_order(values: CubeTensor, out_dtype: IntDType) -> CubeTensor {
            let values = into_contiguous(values);
            let shape = values.meta.shape().clone();
            let (rows, columns) = (shape[0], shape[1]);
            // Zeros, so that even a column with NaN (whose ranks collide) holds valid indices.
            let order = zeros_client(
                values.client.clone(),
                values.device.clone(),
                Shape::new([rows, columns]),
                DType::from(out_dtype),
            );
            let total = rows * columns;
            if total == 0 {
                return order;
            }
            let cube_dim = CubeDim::new(&values.client, total);
            let cube_count = calculate_cube_count_elemwise(&values.client, total, cube_dim);
            let address = values
                .required_address_type()
                .max(order.required_address_type());
            let dtypes = [
                dtype_to_storage_type(values.dtype),
                dtype_to_storage_type(order.dtype),
            ];
            let client = values.client.clone();
            // SAFETY: every thread reads inside `values` (`rows × columns`, contiguous) and writes
            // one element of `order` at a rank below `rows`: a value's rank counts other rows only.
            unsafe {
                rank_columns_kernel::launch_unchecked(
                    &client,
                    cube_count,
                    cube_dim,
                    address,
                    values.into_tensor_arg(),
                    order.clone().into_tensor_arg(),
                    rows,
                    columns,
                    dtypes,
                );
            }
            order
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use proptest::prelude::*;

    fn orders_like_a_stable_sort(values: &[f32], count: usize) -> Vec<i64> {
        let n = values.len() / count;
        let mut order = vec![0; n * count];
        for column in 0..count {
            let mut rows: Vec<usize> = (0..n).collect();
            rows.sort_by(|&a, &b| {
                values[a * count + column].total_cmp(&values[b * count + column])
            });
            for (rank, row) in rows.into_iter().enumerate() {
                order[rank * count + column] = row as i64;
            }
        }
        order
    }

    proptest! {
        #[test]
        fn sorts_every_column(
            (n, count, values) in (1usize..40, 1usize..6).prop_flat_map(|(n, count)| {
                (Just(n), Just(count), proptest::collection::vec(-4i8..4, n * count))
            })
        ) {
            // Small integers, so that ties are common: the stable order is then the only answer.
            let values: Vec<f32> = values.into_iter().map(f32::from).collect();
            let tensor = Tensor::<2>::from_data(TensorData::new(values.clone(), [n, count]), &default_device());
            let order = column_order(tensor).into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
            let expected = orders_like_a_stable_sort(&values, count);
            // Tied values may come in any order on flex: compare the values they pick.
            let picked = |order: &[i64]| -> Vec<f32> {
                order.iter().enumerate().map(|(i, &row)| values[row as usize * count + i % count]).collect()
            };
            prop_assert_eq!(picked(&order), picked(&expected));
            let mut each_column: Vec<Vec<i64>> = vec![Vec::new(); count];
            for (i, &row) in order.iter().enumerate() {
                each_column[i % count].push(row);
            }
            for mut rows in each_column {
                rows.sort_unstable();
                prop_assert_eq!(rows, (0..n as i64).collect::<Vec<_>>());
            }
        }
    }
}
