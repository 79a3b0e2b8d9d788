//! Linear layers, `y = x·W + b` with burn's `[d_in, d_out]` weight, forward and backward, as one
//! product by the `gemm` crate each way.
//!
//! burn `flex` runs a linear layer as a matrix product into a buffer it first fills with zeros and
//! then copies to realign it, both on the calling thread, and adds the bias in a separate broadcast
//! pass; its backward passes are two more such products and a single-threaded sum over the rows for
//! the bias. In Swin-T's training step the calling thread spent about 40 % of the wall time alone,
//! half of it in those fills and copies (BENCHMARKS.md, "CPU speed, session 19"). Here:
//!
//! - forward: the output rows start as copies of the bias (in parallel), and the product
//!   accumulates onto them; without a bias the product writes the output directly;
//! - backward to the input: `dx[rows, d_in] = dy · Wᵀ`, written directly;
//! - backward to the weight: `dW[d_in, d_out] = xᵀ · dy`, written directly;
//! - backward to the bias: column sums of `dy` over fixed groups of rows in parallel, the groups
//!   then added in order.
//!
//! The products split rows and columns among threads, never the shared dimension, and the row
//! groups do not depend on the thread count, so the results are the same on any number of threads.
//! Other element types and shapes go to burn's own ops. Benchmark: `cargo bench --bench
//! train_step` (Swin-T; BENCHMARKS.md, "CPU speed, session 20").

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use super::buffers::written;
use super::products::{Element, product};
use super::row_major;

/// The gradients with respect to the input, the weight and the bias, each present when asked for.
type Gradients3<T> = (Option<T>, Option<T>, Option<T>);

/// Output values each parallel task of the bias fill writes, about.
const FILL_GRAIN: usize = 1 << 14;
/// Rows of the output gradient each parallel task of the bias gradient sums.
const SUM_ROWS: usize = 256;

/// Linear layers with lacoot's kernels where they are faster, implemented per backend.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait LinearOps: Backend {
    /// `x · weight`: `x` is `[..., d_in]`, `weight` `[d_in, d_out]`.
    fn dense_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::linear(x, weight, None)
    }

    /// `x · weight + bias`, with `bias` `[d_out]` added to every row.
    fn dense_affine(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::linear(x, weight, Some(bias))
    }

    /// The gradients of [`LinearOps::dense_linear`] and [`LinearOps::dense_affine`] with respect
    /// to `x`, `weight` and the bias,
    /// each computed only when `wanted` asks for it.
    #[allow(clippy::type_complexity)] // the extension macro reads the tensor types spelled out
    fn dense_linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        wanted: [bool; 3],
    ) -> (
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
    ) {
        burn_backward::<Self>(x, weight, output_grad, wanted)
    }
}

/// The gradients of a linear layer by burn's own ops of backend `B`, each only when wanted.
fn burn_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    [want_x, want_weight, want_bias]: [bool; 3],
) -> Gradients3<FloatTensor<B>> {
    let x_grad = want_x.then(|| B::linear_x_backward(weight, output_grad.clone()));
    let weight_grad = want_weight.then(|| B::linear_weight_backward(x, output_grad.clone()));
    let bias_grad = want_bias.then(|| B::linear_bias_backward(output_grad));
    (x_grad, weight_grad, bias_grad)
}

/// `layer.forward(input)` through [`LinearOps::dense_affine`], or [`LinearOps::dense_linear`]
/// when the layer has no bias.
pub fn linear<const D: usize>(layer: &Linear, input: Tensor<D>) -> Tensor<D> {
    let (x, weight) = (input.into_dispatch(), layer.weight.val().into_dispatch());
    Tensor::from_dispatch(match &layer.bias {
        Some(bias) => <Dispatch as LinearOps>::dense_affine(x, weight, bias.val().into_dispatch()),
        None => <Dispatch as LinearOps>::dense_linear(x, weight),
    })
}

/// Sizes of one linear layer: `rows` inputs of `d_in` values each, `d_out` outputs each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    rows: usize,
    d_in: usize,
    d_out: usize,
}

impl Geometry {
    /// `None` when the shapes do not form a linear layer lacoot's kernels run (checked by burn's
    /// fallback instead, which reports the problem).
    fn new(x: &[usize], weight: &[usize], bias: Option<&[usize]>) -> Option<Self> {
        let (&d_in, leading) = x.split_last()?;
        let &[weight_in, d_out] = weight else {
            return None;
        };
        let bias_fits = bias.is_none_or(|bias| bias == [d_out]);
        let rows = leading.iter().product();
        // Empty products are left to burn: `gemm` need not write an output it sums nothing into.
        let sizes = rows > 0 && d_in > 0 && d_out > 0;
        let fits = !leading.is_empty() && sizes && weight_in == d_in && bias_fits;
        fits.then_some(Self { rows, d_in, d_out })
    }
}

/// `x · weight + bias` for row-major `x` `[rows, d_in]`, `weight` `[d_in, d_out]` and `bias`
/// `[d_out]`.
fn forward<T: Element>(g: Geometry, x: &[T], weight: &[T], bias: Option<&[T]>) -> Vec<T> {
    let Geometry { rows, d_in, d_out } = g;
    // SAFETY: the output is `[rows, d_out]`: filled with the bias rows first when there is one, and
    // then accumulated onto, or written whole by the product; `x` is `[rows, d_in]` and `weight`
    // `[d_in, d_out]`, all row-major.
    unsafe {
        written(rows * d_out, |out: *mut T| {
            if let Some(bias) = bias {
                let out = std::slice::from_raw_parts_mut(out.cast(), rows * d_out);
                let rows_per_task = (FILL_GRAIN / d_out.max(1)).max(1);
                out.par_chunks_mut(rows_per_task * d_out.max(1)).for_each(
                    |block: &mut [std::mem::MaybeUninit<T>]| {
                        for row in block.chunks_mut(d_out) {
                            for (slot, &value) in row.iter_mut().zip(bias) {
                                slot.write(value);
                            }
                        }
                    },
                );
            }
            product(
                [rows, d_out, d_in],
                (out, d_out as isize, 1),
                bias.is_some(),
                (x.as_ptr(), d_in as isize, 1),
                (weight.as_ptr(), d_out as isize, 1),
            );
        })
    }
}

/// The gradients with respect to the input (`[rows, d_in]`), the weight (`[d_in, d_out]`) and the
/// bias (`[d_out]`) for the row-major output gradient `dy` (`[rows, d_out]`), each only when
/// wanted.
fn backward<T: Element>(
    g: Geometry,
    x: &[T],
    weight: &[T],
    dy: &[T],
    [want_x, want_weight, want_bias]: [bool; 3],
) -> Gradients3<Vec<T>> {
    let Geometry { rows, d_in, d_out } = g;
    // SAFETY: `dx` is `[rows, d_in]`, `dy` `[rows, d_out]` and `weight` `[d_in, d_out]` read as its
    // transpose; the product writes the whole output.
    let dx = want_x.then(|| unsafe {
        written(rows * d_in, |dx: *mut T| {
            product(
                [rows, d_in, d_out],
                (dx, d_in as isize, 1),
                false,
                (dy.as_ptr(), d_out as isize, 1),
                (weight.as_ptr(), 1, d_out as isize),
            )
        })
    });
    // SAFETY: `dw` is `[d_in, d_out]`, `x` `[rows, d_in]` read as its transpose and `dy`
    // `[rows, d_out]`; the product writes the whole output.
    let dw = want_weight.then(|| unsafe {
        written(d_in * d_out, |dw: *mut T| {
            product(
                [d_in, d_out, rows],
                (dw, d_out as isize, 1),
                false,
                (x.as_ptr(), 1, d_in as isize),
                (dy.as_ptr(), d_out as isize, 1),
            )
        })
    });
    let db = want_bias.then(|| column_sums(dy, d_out));
    (dx, dw, db)
}

/// The sums of the columns of the row-major matrix `values` with `columns` columns: each group of
/// [`SUM_ROWS`] rows is summed in parallel, and the groups' sums are added in order.
fn column_sums<T: Element>(values: &[T], columns: usize) -> Vec<T> {
    let mut total = vec![T::default(); columns];
    if columns == 0 {
        return total;
    }
    let partials: Vec<Vec<T>> = values
        .par_chunks(SUM_ROWS * columns)
        .map(|group| {
            let mut sums = vec![T::default(); columns];
            for row in group.chunks(columns) {
                for (sum, &value) in sums.iter_mut().zip(row) {
                    *sum += value;
                }
            }
            sums
        })
        .collect();
    for partial in partials {
        for (sum, value) in total.iter_mut().zip(partial) {
            *sum += value;
        }
    }
    total
}

/// [`forward`] on flex tensors of element type `T`.
fn host_forward<T: Element>(
    g: Geometry,
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
) -> FlexTensor {
    let (mut x_copy, mut weight_copy, mut bias_copy) = (None, None, None);
    let values = forward(
        g,
        row_major::<T>(x, &mut x_copy),
        row_major::<T>(weight, &mut weight_copy),
        bias.map(|bias| row_major::<T>(bias, &mut bias_copy)),
    );
    let mut shape = x.shape().as_slice().to_vec();
    *shape.last_mut().expect("at least one axis") = g.d_out;
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// [`backward`] on flex tensors of element type `T`, shaped as `x`, `weight` and the bias.
fn host_backward<T: Element>(
    g: Geometry,
    x: &FlexTensor,
    weight: &FlexTensor,
    output_grad: &FlexTensor,
    wanted: [bool; 3],
) -> Gradients3<FlexTensor> {
    let (mut x_copy, mut weight_copy, mut dy_copy) = (None, None, None);
    let (dx, dw, db) = backward(
        g,
        row_major::<T>(x, &mut x_copy),
        row_major::<T>(weight, &mut weight_copy),
        row_major::<T>(output_grad, &mut dy_copy),
        wanted,
    );
    let tensor =
        |values: Vec<T>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(values, shape));
    (
        dx.map(|dx| tensor(dx, x.shape().as_slice().to_vec())),
        dw.map(|dw| tensor(dw, vec![g.d_in, g.d_out])),
        db.map(|db| tensor(db, vec![g.d_out])),
    )
}

/// A linear layer on flex: lacoot's kernels for `f32` and `f64` operands of matching shapes,
/// burn's op otherwise.
fn flex_linear(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
    let bias_shape = bias.as_ref().map(|bias| bias.shape());
    let geometry = Geometry::new(
        x.shape().as_slice(),
        weight.shape().as_slice(),
        bias_shape.as_ref().map(|shape| shape.as_slice()),
    );
    let bias_dtype = bias.as_ref().map_or(x.dtype(), |bias| bias.dtype());
    match (geometry, [x.dtype(), weight.dtype(), bias_dtype]) {
        (Some(g), [DType::F32, DType::F32, DType::F32]) => {
            host_forward::<f32>(g, &x, &weight, bias.as_ref())
        }
        (Some(g), [DType::F64, DType::F64, DType::F64]) => {
            host_forward::<f64>(g, &x, &weight, bias.as_ref())
        }
        _ => <Flex as ModuleOps<Flex>>::linear(x, weight, bias),
    }
}

/// burn's own linear layers on the cubecl backends (wgpu, cuda).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl LinearOps for burn::backend::Cube {}

impl LinearOps for Flex {
    fn dense_linear(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        flex_linear(x, weight, None)
    }

    fn dense_affine(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        flex_linear(x, weight, Some(bias))
    }

    fn dense_linear_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        wanted: [bool; 3],
    ) -> Gradients3<FlexTensor> {
        let geometry =
            Geometry::new(x.shape().as_slice(), weight.shape().as_slice(), None).filter(|g| {
                let mut expected = x.shape().as_slice().to_vec();
                *expected.last_mut().expect("at least one axis") = g.d_out;
                output_grad.shape().as_slice() == expected.as_slice()
            });
        match (geometry, [x.dtype(), weight.dtype(), output_grad.dtype()]) {
            (Some(g), [DType::F32, DType::F32, DType::F32]) => {
                host_backward::<f32>(g, &x, &weight, &output_grad, wanted)
            }
            (Some(g), [DType::F64, DType::F64, DType::F64]) => {
                host_backward::<f64>(g, &x, &weight, &output_grad, wanted)
            }
            _ => burn_backward::<Flex>(x, weight, output_grad, wanted),
        }
    }
}

/// The backward pass of [`LinearOps::dense_linear`] with `N` parents: the input, the weight and,
/// when there is one, the bias.
#[derive(Debug)]
struct DenseLinearBackward<const N: usize>;

impl<B: Backend + LinearOps, const N: usize> Backward<B, N> for DenseLinearBackward<N> {
    /// The input and the weight.
    type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let output_grad = grads.consume::<B>(&ops.node);
        let (x, weight) = ops.state;
        let wanted: [bool; 3] =
            std::array::from_fn(|i| ops.parents.get(i).is_some_and(Option::is_some));
        let (x_grad, weight_grad, bias_grad) =
            B::dense_linear_backward(x, weight, output_grad, wanted);
        for (parent, grad) in ops
            .parents
            .into_iter()
            .zip([x_grad, weight_grad, bias_grad])
        {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// [`LinearOps::dense_affine`] with a bias, [`LinearOps::dense_linear`] without, on backend `B`.
fn forward_on<B: LinearOps>(
    x: B::FloatTensorPrimitive,
    weight: B::FloatTensorPrimitive,
    bias: Option<B::FloatTensorPrimitive>,
) -> B::FloatTensorPrimitive {
    match bias {
        Some(bias) => B::dense_affine(x, weight, bias),
        None => B::dense_linear(x, weight),
    }
}

/// [`LinearOps::dense_linear`] or [`LinearOps::dense_affine`] on the autodiff backend with the parents `nodes` (`N` = 3 with a
/// bias, 2 without).
fn linear_on_autodiff<B: Backend + LinearOps, C: CheckpointStrategy, const N: usize>(
    nodes: [NodeGuard; N],
    x: B::FloatTensorPrimitive,
    weight: B::FloatTensorPrimitive,
    bias: Option<B::FloatTensorPrimitive>,
) -> FloatTensor<Autodiff<B, C>> {
    match DenseLinearBackward::<N>
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let output = forward_on::<B>(x.clone(), weight.clone(), bias);
            prep.finish((x, weight), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward_on::<B>(x, weight, bias)),
    }
}

impl<B: Backend + LinearOps, C: CheckpointStrategy> LinearOps for Autodiff<B, C> {
    fn dense_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        linear_on_autodiff::<B, C, 2>(
            [x.node(), weight.node()],
            x.into_primitive(),
            weight.into_primitive(),
            None,
        )
    }

    fn dense_affine(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        linear_on_autodiff::<B, C, 3>(
            [x.node(), weight.node(), bias.node()],
            x.into_primitive(),
            weight.into_primitive(),
            Some(bias.into_primitive()),
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::LinearConfig;
    use burn::tensor::{Distribution, Tolerance};
    use proptest::prelude::*;

    use super::*;
    use crate::device::autodiff_device;

    /// Output and the gradients of the input, the weight and the bias (when the layer has one) of
    /// `run`, with the output gradient `probe` (the gradient of `sum(output · probe)`).
    fn value_and_gradients<const D: usize>(
        run: impl Fn(&Linear, Tensor<D>) -> Tensor<D>,
        layer: &Linear,
        x: &Tensor<D>,
        probe: &Tensor<D>,
    ) -> Vec<TensorData> {
        let x = x.clone().require_grad();
        let output = run(layer, x.clone());
        let grads = (output.clone() * probe.clone()).sum().backward();
        let mut values = vec![
            output.into_data(),
            x.grad(&grads).expect("input gradient").into_data(),
            layer
                .weight
                .grad(&grads)
                .expect("weight gradient")
                .into_data(),
        ];
        if let Some(bias) = &layer.bias {
            values.push(bias.grad(&grads).expect("bias gradient").into_data());
        }
        values
    }

    /// lacoot's kernel against burn's `Linear::forward` on `x` of shape `x_shape`: the value and
    /// every gradient. With `transposed`, `x` is a strided view (its last two axes swapped).
    fn check_against_burn<const D: usize>(
        x_shape: [usize; D],
        d_out: usize,
        bias: bool,
        transposed: bool,
        seed: u64,
    ) {
        let device = autodiff_device();
        device.seed(seed);
        let d_in = x_shape[D - 1];
        let layer = LinearConfig::new(d_in, d_out).with_bias(bias).init(&device);
        let layer = Linear {
            bias: layer.bias.map(|_| {
                Param::from_tensor(Tensor::random([d_out], Distribution::Default, &device))
            }),
            ..layer
        };
        let x = if transposed && D >= 2 {
            let mut stored = x_shape;
            stored.swap(D - 1, D - 2);
            Tensor::<D>::random(stored, Distribution::Normal(0.0, 1.0), &device)
                .swap_dims(D - 1, D - 2)
        } else {
            Tensor::<D>::random(x_shape, Distribution::Normal(0.0, 1.0), &device)
        };
        let mut out_shape = x_shape;
        out_shape[D - 1] = d_out;
        let probe = Tensor::<D>::random(out_shape, Distribution::Normal(0.0, 1.0), &device);
        let ours = value_and_gradients(linear, &layer, &x, &probe);
        let theirs = value_and_gradients(|layer, x| layer.forward(x), &layer, &x, &probe);
        assert_eq!(ours.len(), theirs.len());
        for (ours, theirs) in ours.iter().zip(&theirs) {
            assert_eq!(ours.shape(), theirs.shape());
            ours.assert_approx_eq::<f32>(theirs, Tolerance::absolute(1e-4).set_relative(1e-4));
        }
    }

    #[test]
    fn matches_burn_on_the_swin_shapes() {
        // qkv and fc1 over windows of tokens, proj without bias, a classifier head on a batch.
        check_against_burn([8, 49, 24], 72, true, false, 1);
        check_against_burn([2, 4, 16, 32], 128, true, false, 2);
        check_against_burn([8, 49, 24], 24, false, false, 3);
        check_against_burn([16, 96], 10, true, false, 4);
        // More rows than one group of the bias gradient, and a strided input.
        check_against_burn([3 * SUM_ROWS + 5, 7], 9, true, false, 5);
        check_against_burn([4, 6, 5], 3, true, true, 6);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matches_burn_on_random_shapes(
            batch in 1usize..5,
            tokens in 1usize..9,
            d_in in 1usize..12,
            d_out in 1usize..12,
            bias: bool,
            transposed: bool,
            seed in 0u64..1000,
        ) {
            check_against_burn([batch, tokens, d_in], d_out, bias, transposed, seed);
        }
    }

    /// Smooth, deterministic input, weight, bias and output-gradient values for `g`.
    fn operands(g: Geometry) -> [Vec<f64>; 4] {
        crate::kernels::smooth_operands([
            g.rows * g.d_in,
            g.d_in * g.d_out,
            g.d_out,
            g.rows * g.d_out,
        ])
    }

    /// Central differences of `sum((x·W + b) · probe)` in f64 against the kernel's gradients.
    #[test]
    fn gradients_match_finite_differences() {
        let g = Geometry {
            rows: 5,
            d_in: 4,
            d_out: 3,
        };
        let [x, w, b, probe] = operands(g);
        let (dx, dw, db) = backward(g, &x, &w, &probe, [true, true, true]);
        let grads = [dx.unwrap(), dw.unwrap(), db.unwrap()];
        let objective = |[x, w, b]: &[Vec<f64>; 3]| -> f64 {
            let out = forward(g, x, w, Some(b));
            out.iter().zip(&probe).map(|(o, p)| o * p).sum()
        };
        crate::kernels::assert_central_differences([x, w, b], &grads, objective, 1e-7, "linear");
    }

    /// Empty products and mismatched shapes go to burn's op.
    #[test]
    fn empty_and_mismatched_shapes_are_left_to_burn() {
        assert_eq!(
            Geometry::new(&[2, 3, 4], &[4, 5], Some(&[5])),
            Some(Geometry {
                rows: 6,
                d_in: 4,
                d_out: 5
            })
        );
        for (x, weight, bias) in [
            (&[0, 4][..], &[4, 5][..], None),
            (&[2, 0], &[0, 5], None),
            (&[2, 4], &[4, 0], None),
            (&[4], &[4, 5], None),
            (&[2, 3], &[4, 5], None),
            (&[2, 4], &[4, 5], Some(&[4][..])),
        ] {
            assert_eq!(
                Geometry::new(x, weight, bias),
                None,
                "{x:?} {weight:?} {bias:?}"
            );
        }
    }

    /// The bias gradient equals the plain column sums, and the forward without a bias equals the
    /// forward with a zero bias.
    #[test]
    fn column_sums_and_the_bias_free_forward() {
        let g = Geometry {
            rows: 2 * SUM_ROWS + 3,
            d_in: 5,
            d_out: 4,
        };
        let [x, w, _, dy] = operands(g);
        let sums = column_sums(&dy, g.d_out);
        for (column, &sum) in sums.iter().enumerate() {
            let direct: f64 = dy.iter().skip(column).step_by(g.d_out).sum();
            assert!(
                (sum - direct).abs() < 1e-12,
                "column {column}: {sum} vs {direct}"
            );
        }
        let zeros = vec![0.0; g.d_out];
        assert_eq!(forward(g, &x, &w, None), forward(g, &x, &w, Some(&zeros)));
    }

    /// The same values bit for bit on one thread and on four, at a size `gemm` splits across
    /// threads.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let g = Geometry {
            rows: 1500,
            d_in: 192,
            d_out: 160,
        };
        let [x, w, b, dy] =
            operands(g).map(|v| v.into_iter().map(|v| v as f32).collect::<Vec<_>>());
        let run = |threads: usize| {
            crate::kernels::on_threads(threads, || {
                (
                    forward(g, &x, &w, Some(&b)),
                    backward(g, &x, &w, &dy, [true, true, true]),
                )
            })
        };
        let (one, four) = (run(1), run(4));
        assert!(one.0 == four.0, "forward differs");
        assert!(one.1 == four.1, "backward differs");
    }
}
