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
use burn::tensor::TensorData;

/// `[B, C, H, W]` to `[H, W, B, C]`; its own inverse.
const ROWS: [usize; 4] = [2, 3, 0, 1];

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
    match (is_position_major(reference), is_position_major(&tensor)) {
        (true, true) => tensor,
        (true, false) => tensor.permute(&ROWS).to_contiguous().permute(&ROWS),
        (false, _) if tensor.is_contiguous() && tensor.layout().start_offset() == 0 => tensor,
        (false, _) => tensor.to_contiguous(),
    }
}

#[cfg(test)]
mod tests {
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
}
