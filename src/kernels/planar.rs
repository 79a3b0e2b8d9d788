//! Activations and gradients handed on contiguous (`[B, C, H, W]` in that order) where a
//! position-major tensor ([`super::position_major`]) would meet an op that wants planes.
//!
//! Two places in a training step take such a tensor as it comes and convert it on one thread:
//!
//! - a tensor with several consumers sums their gradients with flex's `float_add`, which adds two
//!   position-major gradients through a freshly allocated, element-by-element strided loop (a
//!   ResNet block's input feeds its first convolution and its shortcut, and each hands back a
//!   position-major gradient);
//! - the distances flatten each block's activations into points, and flex's `reshape` copies a
//!   position-major tensor into planes element by element.
//!
//! [`planar_gradient`] passes its input on and converts the gradient coming back to planes (in
//! parallel) before it is summed with the others, which flex then adds in place with SIMD;
//! [`planar`] converts the activation itself (in parallel) and passes its gradient back as it
//! comes. Both leave every other tensor as it is, and are identities on the GPU backends.
//! Benchmark: the width-16 epoch of `lacoot train` (BENCHMARKS.md, "CPU speed, session 21").

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::position_major;

/// Layout changes as graph ops, implemented per backend.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait PlanarOps: Backend {
    /// `x` stored contiguously in its logical order; the same values.
    fn planar(x: FloatTensor<Self>) -> FloatTensor<Self> {
        x
    }

    /// `x` itself, with its gradient stored as [`PlanarOps::planar`] stores a tensor.
    fn planar_gradient(x: FloatTensor<Self>) -> FloatTensor<Self> {
        x
    }
}

/// `x` stored contiguously in its logical order (converted in parallel from position-major
/// storage); its gradient passes back as it comes.
pub fn planar<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as PlanarOps>::planar(x.into_dispatch()))
}

/// `x` itself, its gradient converted to contiguous storage before it is summed with the
/// gradients of `x`'s other consumers. For a tensor with several consumers, each given its own
/// `planar_gradient(x)`.
pub fn planar_gradient<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as PlanarOps>::planar_gradient(x.into_dispatch()))
}

/// burn's own layouts on the cubecl backends (wgpu, cuda).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl PlanarOps for burn::backend::Cube {}

impl PlanarOps for Flex {
    fn planar(x: FlexTensor) -> FlexTensor {
        position_major::planar(x)
    }
}

/// The backward pass of both ops: the gradient passed back as it comes, or stored contiguously
/// when `convert`.
#[derive(Debug)]
struct PlanarBackward {
    convert: bool,
}

impl<B: Backend + PlanarOps> Backward<B, 1> for PlanarBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            if self.convert { B::planar(grad) } else { grad }
        });
    }
}

impl<B: Backend + PlanarOps, C: CheckpointStrategy> PlanarOps for Autodiff<B, C> {
    fn planar(x: FloatTensor<Self>) -> FloatTensor<Self> {
        PlanarBackward { convert: false }
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateless(B::planar(x.into_primitive()))
    }

    fn planar_gradient(x: FloatTensor<Self>) -> FloatTensor<Self> {
        PlanarBackward { convert: true }
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateless(x.into_primitive())
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::TensorMetadata;
    use burn::backend::ops::ConvOptions;
    use burn::tensor::{TensorData, Tolerance};

    use super::*;
    use crate::device::autodiff_device;
    use crate::kernels::conv2d::dense_conv2d;

    fn values(shape: [usize; 4], phase: f32) -> TensorData {
        let len = shape.iter().product::<usize>();
        TensorData::new(
            (0..len).map(|i| (i as f32 * 0.37 + phase).sin()).collect(),
            shape,
        )
    }

    #[test]
    fn planar_stores_a_position_major_activation_in_planes() {
        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        // A 5x5 plane of 16 images: the convolution hands its output on position-major.
        let x = FlexTensor::from_data(values([16, 4, 5, 5], 0.0));
        let w = FlexTensor::from_data(values([6, 4, 3, 3], 1.0));
        let y = <Flex as crate::kernels::conv2d::ConvOps>::dense_conv2d(x, w, same);
        assert!(!y.is_contiguous());
        let planes = <Flex as PlanarOps>::planar(y.clone());
        assert!(planes.is_contiguous());
        assert_eq!(planes.shape(), y.shape());
        assert_eq!(planes.into_data(), y.clone().into_data());
        assert!(<Flex as PlanarOps>::planar_gradient(y.clone()).layout() == y.layout());
    }

    /// The same graph with and without the layout ops: equal values and input gradients, and
    /// every gradient of the activation added however it is stored.
    #[test]
    fn layout_ops_change_no_value_or_gradient() {
        let device = autodiff_device();
        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let run = |with_ops: bool| {
            let x = Tensor::<4>::from_data(values([16, 4, 5, 5], 0.0), &device).require_grad();
            let w = Tensor::<4>::from_data(values([6, 4, 3, 3], 1.0), &device);
            let w2 = Tensor::<4>::from_data(values([6, 6, 3, 3], 2.0), &device);
            let y = dense_conv2d(x.clone(), w, same.clone());
            let (first, second, flat) = if with_ops {
                (
                    planar_gradient(y.clone()),
                    planar_gradient(y.clone()),
                    planar(y),
                )
            } else {
                (y.clone(), y.clone(), y)
            };
            let probe = Tensor::<4>::from_data(values([16, 6, 5, 5], 3.0), &device);
            let branch = dense_conv2d(first, w2, same.clone());
            let loss = (branch * probe.clone()).sum()
                + (second * probe.clone()).sum()
                + (flat.reshape([16, 150]) * probe.reshape([16, 150]))
                    .powf_scalar(2.0)
                    .sum();
            let grads = loss.clone().backward();
            (
                loss.into_data(),
                x.grad(&grads).expect("input gradient").into_data(),
            )
        };
        let ((loss, grad), (plain_loss, plain_grad)) = (run(true), run(false));
        loss.assert_approx_eq::<f32>(&plain_loss, Tolerance::rel_abs(1e-6, 1e-6));
        grad.assert_approx_eq::<f32>(&plain_grad, Tolerance::rel_abs(1e-5, 1e-5));
    }
}
