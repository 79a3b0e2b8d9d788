//! A small builder of ONNX graphs over the protobuf types of burn's `onnx-ir`: named nodes,
//! weights as initializers, and the layer helpers (convolution with folded batch norm, linear
//! layers, layer norm, GELU) that the architectures are lowered to.

use std::collections::HashSet;

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::tensor::Tensor;
use onnx_ir::{AttributeProto, AttributeType, GraphProto, NodeProto, TensorProto, ValueInfoProto};
use protobuf::EnumOrUnknown;

use super::super::ExportError;

/// ONNX's element type code for f32.
const FLOAT: i32 = 1;
/// ONNX's element type code for i64.
const INT64: i32 = 7;

/// The batch axis of the graph's input and output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchAxis {
    /// A symbolic axis named `batch`: any batch size runs.
    Dynamic,
    /// A fixed batch size.
    Fixed(usize),
}

/// A graph under construction. Values are referred to by name; every helper returns the name of
/// the value it produced.
pub struct GraphBuilder {
    graph: GraphProto,
    names: HashSet<String>,
    batch: BatchAxis,
}

/// One node attribute.
pub enum Attribute<'a> {
    /// An integer.
    Int(&'a str, i64),
    /// A list of integers.
    Ints(&'a str, Vec<i64>),
    /// A float.
    Float(&'a str, f32),
}

impl Attribute<'_> {
    fn proto(&self) -> AttributeProto {
        let mut attribute = AttributeProto::new();
        match self {
            Self::Int(name, value) => {
                attribute.name = (*name).into();
                attribute.i = *value;
                attribute.type_ = EnumOrUnknown::new(AttributeType::INT);
            }
            Self::Ints(name, values) => {
                attribute.name = (*name).into();
                attribute.ints = values.clone();
                attribute.type_ = EnumOrUnknown::new(AttributeType::INTS);
            }
            Self::Float(name, value) => {
                attribute.name = (*name).into();
                attribute.f = *value;
                attribute.type_ = EnumOrUnknown::new(AttributeType::FLOAT);
            }
        }
        attribute
    }
}

/// A tensor's values as f32, in row-major order.
fn values<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, ExportError> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ExportError::Graph(format!("cannot read a weight: {e:?}")))
}

fn param_values<const D: usize>(param: &Param<Tensor<D>>) -> Result<Vec<f32>, ExportError> {
    values(param.val())
}

/// Sizes as ONNX's i64 lists.
pub fn as_i64(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

impl GraphBuilder {
    /// An empty graph named `name` whose input and output have the given batch axis.
    pub fn new(name: &str, batch: BatchAxis) -> Self {
        let mut graph = GraphProto::new();
        graph.name = name.into();
        Self {
            graph,
            names: HashSet::new(),
            batch,
        }
    }

    /// The finished graph.
    pub fn finish(self) -> GraphProto {
        self.graph
    }

    /// A name not used yet, `base` itself when free.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut suffix = 1;
        while !self.names.insert(name.clone()) {
            name = format!("{base}_{suffix}");
            suffix += 1;
        }
        name
    }

    fn value_info(&self, name: &str, shape: &[usize]) -> ValueInfoProto {
        let mut info = ValueInfoProto::new();
        info.name = name.into();
        let tensor = info.type_.mut_or_insert_default().mut_tensor_type();
        tensor.elem_type = FLOAT;
        let shape_proto = tensor.shape.mut_or_insert_default();
        shape_proto.dim.push(Default::default());
        let batch = shape_proto.dim.last_mut().expect("just pushed");
        match self.batch {
            BatchAxis::Dynamic => batch.set_dim_param("batch".into()),
            BatchAxis::Fixed(n) => batch.set_dim_value(n as i64),
        }
        for &d in shape {
            shape_proto.dim.push(Default::default());
            let dim = shape_proto.dim.last_mut().expect("just pushed");
            dim.set_dim_value(d as i64);
        }
        info
    }

    /// Declares the graph's input: one sample of shape `sample_shape`, batched.
    pub fn input(&mut self, name: &str, sample_shape: &[usize]) -> String {
        let name = self.fresh(name);
        let info = self.value_info(&name, sample_shape);
        self.graph.input.push(info);
        name
    }

    /// Declares `value` as the graph's output, of shape `[batch, sample_shape…]`, renamed `name`.
    pub fn output(&mut self, value: &str, name: &str, sample_shape: &[usize]) -> String {
        let name = self.node("Identity", name, &[value], &[]);
        let info = self.value_info(&name, sample_shape);
        self.graph.output.push(info);
        name
    }

    /// An f32 initializer of the given shape.
    pub fn constant(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        let name = self.fresh(name);
        let mut tensor = TensorProto::new();
        tensor.name = name.clone();
        tensor.data_type = FLOAT;
        tensor.dims = as_i64(shape);
        tensor.raw_data = bytemuck::cast_slice::<f32, u8>(data).to_vec().into();
        self.graph.initializer.push(tensor);
        name
    }

    /// An i64 initializer of the given shape.
    pub fn constant_i64(&mut self, name: &str, shape: &[usize], data: &[i64]) -> String {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        let name = self.fresh(name);
        let mut tensor = TensorProto::new();
        tensor.name = name.clone();
        tensor.data_type = INT64;
        tensor.dims = as_i64(shape);
        tensor.raw_data = bytemuck::cast_slice::<i64, u8>(data).to_vec().into();
        self.graph.initializer.push(tensor);
        name
    }

    /// A node of `op` named `name` (made unique) with one output of the same name.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attributes: &[Attribute],
    ) -> String {
        let name = self.fresh(name);
        let mut node = NodeProto::new();
        node.name = name.clone();
        node.op_type = op.into();
        node.input = inputs.iter().map(|s| s.to_string()).collect();
        node.output = vec![name.clone()];
        node.attribute = attributes.iter().map(Attribute::proto).collect();
        self.graph.node.push(node);
        name
    }

    /// A 2-D convolution, with the eval-mode batch norm that follows it folded into its weights
    /// and bias: `w' = w·γ/√(σ²+ε)`, `b' = β + (b − μ)·γ/√(σ²+ε)`.
    pub fn conv(
        &mut self,
        name: &str,
        conv: &Conv2d,
        norm: Option<&BatchNorm>,
        input: &str,
    ) -> Result<String, ExportError> {
        let weight_shape = conv.weight.val().dims();
        let out_channels = weight_shape[0];
        let mut weight = param_values(&conv.weight)?;
        let mut bias = match &conv.bias {
            Some(bias) => param_values(bias)?,
            None => vec![0.0; out_channels],
        };
        if let Some(norm) = norm {
            let gamma = param_values(&norm.gamma)?;
            let beta = param_values(&norm.beta)?;
            let mean = values(norm.running_mean.value())?;
            let var = values(norm.running_var.value())?;
            let per_channel = weight.len() / out_channels;
            for c in 0..out_channels {
                let scale =
                    (f64::from(gamma[c]) / (f64::from(var[c]) + norm.epsilon).sqrt()) as f32;
                for w in &mut weight[c * per_channel..(c + 1) * per_channel] {
                    *w *= scale;
                }
                bias[c] = beta[c] + (bias[c] - mean[c]) * scale;
            }
        }
        let pads = match &conv.padding {
            PaddingConfig2d::Explicit(top, left, bottom, right) => {
                vec![*top as i64, *left as i64, *bottom as i64, *right as i64]
            }
            PaddingConfig2d::Valid => vec![0; 4],
            other => {
                return Err(ExportError::Graph(format!(
                    "{name}: padding {other:?} has no ONNX form here"
                )));
            }
        };
        let weight = self.constant(&format!("{name}.weight"), &weight_shape, &weight);
        let bias = self.constant(&format!("{name}.bias"), &[out_channels], &bias);
        let [kernel_h, kernel_w] = conv.kernel_size;
        Ok(self.node(
            "Conv",
            name,
            &[input, &weight, &bias],
            &[
                Attribute::Ints("kernel_shape", as_i64(&[kernel_h, kernel_w])),
                Attribute::Ints("strides", as_i64(&conv.stride)),
                Attribute::Ints("dilations", as_i64(&conv.dilation)),
                Attribute::Ints("pads", pads),
                Attribute::Int("group", conv.groups as i64),
            ],
        ))
    }

    /// A linear layer over the last axis: `Gemm` for `[batch, features]` input, `MatMul` + `Add`
    /// for inputs with more axes.
    pub fn linear(
        &mut self,
        name: &str,
        linear: &Linear,
        input: &str,
        input_rank: usize,
    ) -> Result<String, ExportError> {
        let weight_shape = linear.weight.val().dims();
        let weight = param_values(&linear.weight)?;
        let weight = self.constant(&format!("{name}.weight"), &weight_shape, &weight);
        let bias = match &linear.bias {
            Some(bias) => {
                let data = param_values(bias)?;
                Some(self.constant(&format!("{name}.bias"), &[data.len()], &data))
            }
            None => None,
        };
        if input_rank == 2 {
            let mut inputs = vec![input, weight.as_str()];
            inputs.extend(bias.as_deref());
            return Ok(self.node("Gemm", name, &inputs, &[]));
        }
        let product = self.node("MatMul", &format!("{name}.matmul"), &[input, &weight], &[]);
        Ok(match bias {
            Some(bias) => self.node("Add", name, &[&product, &bias], &[]),
            None => product,
        })
    }

    /// The classifier head of every architecture: global average pooling over `[batch, C, H, W]`,
    /// flattening, then the linear layer named `name`.
    pub fn pooled_classifier(
        &mut self,
        name: &str,
        linear: &Linear,
        input: &str,
    ) -> Result<String, ExportError> {
        let pooled = self.node("GlobalAveragePool", "avgpool", &[input], &[]);
        let flat = self.node(
            "Flatten",
            "flatten",
            &[&pooled],
            &[Attribute::Int("axis", 1)],
        );
        self.linear(name, linear, &flat, 2)
    }

    /// Layer norm over the last axis with scale `gamma` and shift `beta`.
    pub fn layer_norm(
        &mut self,
        name: &str,
        norm: &burn::nn::LayerNorm,
        epsilon: f64,
        input: &str,
    ) -> Result<String, ExportError> {
        let gamma = param_values(&norm.gamma)?;
        let beta = match &norm.beta {
            Some(beta) => param_values(beta)?,
            None => vec![0.0; gamma.len()],
        };
        let gamma = self.constant(&format!("{name}.weight"), &[gamma.len()], &gamma);
        let beta = self.constant(&format!("{name}.bias"), &[beta.len()], &beta);
        Ok(self.node(
            "LayerNormalization",
            name,
            &[input, &gamma, &beta],
            &[
                Attribute::Int("axis", -1),
                Attribute::Float("epsilon", epsilon as f32),
            ],
        ))
    }

    /// The exact GELU, `x·(1 + erf(x/√2))/2`.
    pub fn gelu(&mut self, name: &str, input: &str) -> String {
        let inv_sqrt2 = self.constant(
            &format!("{name}.inv_sqrt2"),
            &[],
            &[std::f32::consts::FRAC_1_SQRT_2],
        );
        let one = self.constant(&format!("{name}.one"), &[], &[1.0]);
        let half = self.constant(&format!("{name}.half"), &[], &[0.5]);
        let scaled = self.node("Mul", &format!("{name}.scaled"), &[input, &inv_sqrt2], &[]);
        let erf = self.node("Erf", &format!("{name}.erf"), &[&scaled], &[]);
        let shifted = self.node("Add", &format!("{name}.shifted"), &[&erf, &one], &[]);
        let gated = self.node("Mul", &format!("{name}.gated"), &[input, &shifted], &[]);
        self.node("Mul", name, &[&gated, &half], &[])
    }

    /// `min(max(x, 0), 6)`.
    pub fn relu6(&mut self, name: &str, input: &str) -> String {
        let low = self.constant(&format!("{name}.min"), &[], &[0.0]);
        let high = self.constant(&format!("{name}.max"), &[], &[6.0]);
        self.node("Clip", name, &[input, &low, &high], &[])
    }

    /// A reshape to `shape`, where `-1` stands for the (batch-dependent) axis to infer.
    pub fn reshape(&mut self, name: &str, input: &str, shape: &[i64]) -> String {
        let target = self.constant_i64(&format!("{name}.shape"), &[shape.len()], shape);
        self.node("Reshape", name, &[input, &target], &[])
    }

    /// A permutation of the axes.
    pub fn transpose(&mut self, name: &str, input: &str, perm: &[i64]) -> String {
        self.node(
            "Transpose",
            name,
            &[input],
            &[Attribute::Ints("perm", perm.to_vec())],
        )
    }

    /// `input[starts..ends]` along `axes`.
    pub fn slice(
        &mut self,
        name: &str,
        input: &str,
        axes: &[i64],
        starts: &[i64],
        ends: &[i64],
    ) -> String {
        let starts = self.constant_i64(&format!("{name}.starts"), &[starts.len()], starts);
        let ends = self.constant_i64(&format!("{name}.ends"), &[ends.len()], ends);
        let axes = self.constant_i64(&format!("{name}.axes"), &[axes.len()], axes);
        self.node("Slice", name, &[input, &starts, &ends, &axes], &[])
    }

    /// Rolls `input` by `shift` along `axis` of length `length` (torch's `roll`): element `i`
    /// moves to `(i + shift) mod length`.
    pub fn roll(
        &mut self,
        name: &str,
        input: &str,
        axis: i64,
        length: usize,
        shift: i64,
    ) -> String {
        let split = (length as i64 - shift).rem_euclid(length as i64);
        if split == 0 {
            return input.to_string();
        }
        let tail = self.slice(
            &format!("{name}.tail"),
            input,
            &[axis],
            &[split],
            &[length as i64],
        );
        let head = self.slice(&format!("{name}.head"), input, &[axis], &[0], &[split]);
        self.node(
            "Concat",
            name,
            &[&tail, &head],
            &[Attribute::Int("axis", axis)],
        )
    }

    /// Zero padding at the end of each axis: `after[k]` elements after axis `k`.
    pub fn pad_end(&mut self, name: &str, input: &str, after: &[usize]) -> String {
        if after.iter().all(|&a| a == 0) {
            return input.to_string();
        }
        let mut pads = vec![0; after.len()];
        pads.extend(after.iter().map(|&a| a as i64));
        let pads = self.constant_i64(&format!("{name}.pads"), &[pads.len()], &pads);
        self.node("Pad", name, &[input, &pads], &[])
    }
}
