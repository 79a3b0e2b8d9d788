//! Activations stored position-major: `[B, C, H, W]` tensors whose values lie in `[H, W, B, C]`
//! order (flex strides `[C, 1, W·B·C, B·C]`).
//!
//! The tap-by-tap convolutions ([`super::conv2d`]) compute in this order. They hand their output
//! on as such a strided view instead of converting it back to NCHW, the batch norms between them
//! ([`super::batch_norm`]) normalise it where it lies (channels innermost), and the next
//! convolution reads it without converting it again. Every other op sees an ordinary strided
//! flex tensor, which burn's ops read through its strides (and copy where they need NCHW).

use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::buffers::Destination;

/// `[B, C, H, W]` to `[H, W, B, C]`; its own inverse.
const ROWS: [usize; 4] = [2, 3, 0, 1];
/// Values each parallel task of a conversion copies, about.
const CONVERSION_GRAIN: usize = 1 << 14;
/// Side of the square tiles a conversion copies at a time: each tile's rows and columns stay in
/// cache while it is read along one and written along the other.
const TILE: usize = 16;

/// Whether `tensor` is a rank-4 activation stored position-major from the start of its buffer
/// (a plane of one position is both NCHW and position-major).
pub(crate) fn is_position_major(tensor: &FlexTensor) -> bool {
    tensor.shape().num_dims() == 4 && {
        let rows = tensor.layout().permute(&ROWS);
        rows.is_contiguous() && rows.start_offset() == 0
    }
}

/// The values of a position-major `tensor` in `[H, W, B, C]` order, `None` when it is stored
/// otherwise or holds another element type.
pub(crate) fn rows<T: burn::tensor::Element + bytemuck::Pod>(tensor: &FlexTensor) -> Option<&[T]> {
    let len = tensor.shape().num_elements();
    (is_position_major(tensor) && tensor.dtype() == T::dtype())
        .then(|| &tensor.storage::<T>()[..len])
}

/// A `[B, C, H, W]` tensor over `values` in `[H, W, B, C]` order.
pub(crate) fn from_rows<T: burn::tensor::Element>(
    values: Vec<T>,
    [batch, channels, height, width]: [usize; 4],
) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, [height, width, batch, channels])).permute(&ROWS)
}

/// A tensor of `shape` over `values` in `reference`'s order: position-major rows when
/// `reference` is stored so, contiguous values otherwise.
pub(crate) fn tensor_stored_like<T: burn::tensor::Element>(
    values: Vec<T>,
    shape: &[usize],
    reference: &FlexTensor,
) -> FlexTensor {
    match *shape {
        [b, c, h, w] if is_position_major(reference) => from_rows(values, [b, c, h, w]),
        _ => FlexTensor::from_data(TensorData::new(values, shape.to_vec())),
    }
}

/// `tensor` as the kernels read it: position-major when it is stored so, contiguous otherwise.
pub(crate) fn readable(tensor: &FlexTensor) -> FlexTensor {
    stored_like(tensor.clone(), tensor)
}

/// `tensor` stored as `reference` is: position-major when `reference` is, contiguous otherwise
/// (`tensor` itself when it already is).
pub(crate) fn stored_like(tensor: FlexTensor, reference: &FlexTensor) -> FlexTensor {
    if is_position_major(reference) {
        position_major(tensor)
    } else {
        planar(tensor)
    }
}

/// `tensor` stored contiguously in its logical order (`[B, C, H, W]` for an activation); itself
/// when it already is. Position-major activations are converted in parallel.
pub(crate) fn planar(tensor: FlexTensor) -> FlexTensor {
    if is_dense(&tensor) {
        return tensor;
    }
    let converted = match (four_axes(&tensor), is_position_major(&tensor)) {
        (Some([b, c, h, w]), true) => {
            // Rows `[H·W, B·C]` become planes `[B·C, H·W]`.
            transposed_tensor(&tensor, [h * w, b * c], vec![b, c, h, w])
        }
        _ => None,
    };
    converted.unwrap_or_else(|| tensor.to_contiguous())
}

/// `tensor` (`[B, C, H, W]`) stored position-major; itself when it already is. Contiguous
/// activations are converted in parallel.
fn position_major(tensor: FlexTensor) -> FlexTensor {
    if is_position_major(&tensor) {
        return tensor;
    }
    let dense = is_dense(&tensor);
    let converted = match four_axes(&tensor) {
        // Planes `[B·C, H·W]` become rows `[H·W, B·C]`, viewed as `[B, C, H, W]`.
        Some([b, c, h, w]) if dense => transposed_tensor(&tensor, [b * c, h * w], vec![h, w, b, c])
            .map(|rows| rows.permute(&ROWS)),
        _ => None,
    };
    converted.unwrap_or_else(|| tensor.permute(&ROWS).to_contiguous().permute(&ROWS))
}

/// Whether `tensor` is stored contiguously in its logical order from the start of its buffer.
fn is_dense(tensor: &FlexTensor) -> bool {
    tensor.is_contiguous() && tensor.layout().start_offset() == 0
}

/// The four axes of a rank-4 tensor.
fn four_axes(tensor: &FlexTensor) -> Option<[usize; 4]> {
    tensor.shape().as_slice().try_into().ok()
}

/// A tensor of `shape` over the transpose of the `[rows, columns]` matrix that `tensor`'s storage
/// holds from its start; `None` for element types other than `f32` and `f64`.
fn transposed_tensor(
    tensor: &FlexTensor,
    [rows, columns]: [usize; 2],
    shape: Vec<usize>,
) -> Option<FlexTensor> {
    let len = rows * columns;
    let data = match tensor.dtype() {
        DType::F32 => TensorData::new(
            transposed(&tensor.storage::<f32>()[..len], [rows, columns]),
            shape,
        ),
        DType::F64 => TensorData::new(
            transposed(&tensor.storage::<f64>()[..len], [rows, columns]),
            shape,
        ),
        _ => return None,
    };
    Some(FlexTensor::from_data(data))
}

/// The transpose (`[columns, rows]`) of the row-major `[rows, columns]` matrix `values`, copied in
/// parallel over bands of the longer side, tile by tile within a band. A whole tile is read row by
/// row into a local square, transposed there and written out row by row, so that both sides move
/// in contiguous runs the compiler vectorises (1.7–4.7x faster than element by element on the
/// shapes of a width-16 ResNet, BENCHMARKS.md "CPU speed, session 22").
fn transposed<T: Copy + Send + Sync + Default>(
    values: &[T],
    [rows, columns]: [usize; 2],
) -> Vec<T> {
    assert_eq!(values.len(), rows * columns, "a [{rows}, {columns}] matrix");
    let mut out: Vec<T> = Vec::with_capacity(values.len());
    let destination = Destination::of(out.as_mut_ptr());
    let by_rows = rows >= columns;
    let (long, short) = if by_rows {
        (rows, columns)
    } else {
        (columns, rows)
    };
    let band = (CONVERSION_GRAIN / short.max(1)).clamp(TILE, long.max(TILE)) / TILE * TILE;
    let copy_tile = |row_range: std::ops::Range<usize>, column_range: std::ops::Range<usize>| {
        if row_range.len() == TILE && column_range.len() == TILE {
            let mut square = [[T::default(); TILE]; TILE];
            for (i, row) in row_range.clone().enumerate() {
                let source = &values[row * columns + column_range.start..][..TILE];
                for (line, &value) in square.iter_mut().zip(source) {
                    line[i] = value;
                }
            }
            for (line, column) in square.iter().zip(column_range) {
                // SAFETY: the tile's `TILE` outputs of `column` start at `column·rows +
                // row_range.start` and end within `rows·columns`, the capacity of `out`; each
                // output element is written by exactly one task.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        line.as_ptr(),
                        destination.at(column * rows + row_range.start),
                        TILE,
                    )
                };
            }
            return;
        }
        for row in row_range {
            for column in column_range.clone() {
                // SAFETY: `column·rows + row < rows·columns`, the capacity of `out`; each output
                // element is written by exactly one task.
                unsafe {
                    destination
                        .at(column * rows + row)
                        .write(values[row * columns + column])
                };
            }
        }
    };
    (0..long.div_ceil(band)).into_par_iter().for_each(|task| {
        let span = task * band..((task + 1) * band).min(long);
        for tile in (span.start..span.end).step_by(TILE) {
            let tile = tile..(tile + TILE).min(span.end);
            for across in (0..short).step_by(TILE) {
                let across = across..(across + TILE).min(short);
                if by_rows {
                    copy_tile(tile.clone(), across);
                } else {
                    copy_tile(across, tile.clone());
                }
            }
        }
    });
    // SAFETY: the tasks above wrote every one of the `rows·columns` elements.
    unsafe { out.set_len(values.len()) };
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn values(shape: [usize; 4]) -> Vec<f32> {
        (0..shape.iter().product::<usize>())
            .map(|v| v as f32)
            .collect()
    }

    #[test]
    fn rows_hold_the_values_in_position_major_order() {
        let shape = [2, 3, 2, 2];
        let tensor = from_rows(values(shape), shape);
        assert!(is_position_major(&tensor));
        assert!(!tensor.is_contiguous());
        // Logical [b, c, h, w] sits at ((h·W + w)·B + b)·C + c.
        let nchw = tensor.clone().into_data().try_to_vec::<f32>().unwrap();
        let at = |b: usize, c: usize, h: usize, w: usize| nchw[((b * 3 + c) * 2 + h) * 2 + w];
        assert_eq!(at(1, 2, 1, 0), ((2 * 2 + 1) * 3 + 2) as f32);
        assert_eq!(rows::<f32>(&tensor).unwrap(), values(shape).as_slice());
        assert!(rows::<f64>(&tensor).is_none());
    }

    #[test]
    fn stored_like_converts_both_ways_and_keeps_the_values() {
        let shape = [2, 3, 2, 2];
        let position_major = from_rows(values(shape), shape);
        let nchw = FlexTensor::from_data(position_major.clone().into_data());
        assert!(!is_position_major(&nchw));
        let converted = stored_like(nchw.clone(), &position_major);
        assert!(is_position_major(&converted));
        assert_eq!(rows::<f32>(&converted), rows::<f32>(&position_major));
        let back = stored_like(position_major, &nchw);
        assert!(back.is_contiguous());
        assert_eq!(back.into_data(), nchw.into_data());
    }

    #[test]
    fn a_plane_of_one_position_is_both_orders() {
        let tensor = FlexTensor::from_data(TensorData::new(values([4, 3, 1, 1]), [4, 3, 1, 1]));
        assert!(is_position_major(&tensor));
        assert!(!is_position_major(&FlexTensor::from_data(TensorData::new(
            values([1, 3, 2, 1]),
            [3, 2]
        ))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn transposed_moves_every_value_across_the_diagonal(
            rows in 0usize..70,
            columns in 0usize..70,
            threads in 1usize..4,
        ) {
            let values: Vec<u32> = (0..(rows * columns) as u32).collect();
            let out = crate::kernels::on_threads(threads, || transposed(&values, [rows, columns]));
            prop_assert_eq!(out.len(), values.len());
            for row in 0..rows {
                for column in 0..columns {
                    prop_assert_eq!(out[column * rows + row], values[row * columns + column]);
                }
            }
        }
    }

    #[test]
    fn conversions_keep_the_values_of_both_element_types() {
        // Larger than a tile each way, and not a multiple of it.
        let shape = [20, 3, 5, 7];
        let len = shape.iter().product::<usize>();
        let datas = [
            TensorData::new((0..len).map(|v| v as f32).collect::<Vec<_>>(), shape),
            TensorData::new((0..len).map(|v| v as f64).collect::<Vec<_>>(), shape),
        ];
        for data in datas {
            let nchw = FlexTensor::from_data(data.clone());
            let rows = position_major(nchw.clone());
            assert!(is_position_major(&rows) && !rows.is_contiguous());
            assert_eq!(rows.clone().into_data(), data);
            let planes = planar(rows);
            assert!(planes.is_contiguous() && planes.layout().start_offset() == 0);
            assert_eq!(planes.into_data(), data);
            // Already stored so: the same tensor back.
            assert!(planar(nchw.clone()).is_contiguous());
            let transposed_view = nchw.permute(&[0, 1, 3, 2]);
            assert_eq!(
                planar(transposed_view.clone()).into_data(),
                transposed_view.into_data()
            );
        }
    }
}
