//! Reading arrays (point clouds, projection matrices) from `.npy` and `.safetensors` files.
//!
//! The format is recognised from the file's first bytes, not its name. Both f32 and f64 are read and
//! kept in their precision; NumPy's Fortran-ordered arrays are reordered to row-major.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};
use npyz::{Order, TypeChar};

/// The leading bytes of every `.npy` file.
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// What can go wrong reading an array file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    /// The file could not be read.
    #[error("{path}: cannot read the file")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is neither `.npy` nor `.safetensors`.
    #[error("{path}: not a .npy or .safetensors file (unrecognised leading bytes)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The file looks like `.npy` or `.safetensors` but is malformed.
    #[error("{path}: malformed {format} file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// `.npy` or `.safetensors`.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The array's elements are not f32 or f64.
    #[error("{path}: elements of type {dtype} are not supported; use float32 or float64")]
    UnsupportedElement {
        /// The file.
        path: PathBuf,
        /// The element type found.
        dtype: String,
    },
    /// A `.safetensors` file holds several tensors and none was named.
    #[error("{path}: holds {} tensors ({}); name the one to use", .names.len(), .names.join(", "))]
    AmbiguousTensor {
        /// The file.
        path: PathBuf,
        /// The tensors it holds.
        names: Vec<String>,
    },
    /// A `.safetensors` file has no tensor of the requested name.
    #[error("{path}: has no tensor named '{name}' (it holds: {})", .available.join(", "))]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The requested name.
        name: String,
        /// The tensors it holds.
        available: Vec<String>,
    },
    /// The array does not have the shape the caller needs.
    #[error("{path}: {expected}, but the array has shape {shape:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// What was expected.
        expected: String,
        /// The shape found.
        shape: Vec<usize>,
    },
}

/// The values of an array, in the precision they were stored in.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayValues {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
}

impl ArrayValues {
    fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    fn all_finite(&self) -> bool {
        match self {
            Self::F32(v) => v.iter().all(|x| x.is_finite()),
            Self::F64(v) => v.iter().all(|x| x.is_finite()),
        }
    }
}

/// An array read from a file: its row-major values, shape and the file it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct HostArray {
    /// Where the array was read from (used in error messages).
    pub path: PathBuf,
    /// The array's shape.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: ArrayValues,
}

impl HostArray {
    /// Whether every value is finite (no NaN, no infinity).
    pub fn all_finite(&self) -> bool {
        self.values.all_finite()
    }

    /// Reads an array from a `.npy` file, or from a `.safetensors` file: the tensor named `tensor`, or
    /// the file's only tensor when `tensor` is `None`.
    pub fn read(path: &Path, tensor: Option<&str>) -> Result<Self, ArrayError> {
        let bytes = std::fs::read(path).map_err(|source| ArrayError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if bytes.starts_with(NPY_MAGIC) {
            read_npy(path, &bytes)
        } else if looks_like_safetensors(&bytes) {
            read_safetensors(path, &bytes, tensor)
        } else {
            Err(ArrayError::UnknownFormat {
                path: path.to_path_buf(),
            })
        }
    }

    /// The element type, as burn names it.
    pub fn dtype(&self) -> DType {
        match self.values {
            ArrayValues::F32(_) => DType::F32,
            ArrayValues::F64(_) => DType::F64,
        }
    }

    /// The array as a point cloud `[n, d]` on `device`, keeping its precision: the first axis indexes
    /// the points and the others are flattened (a `[n, C, H, W]` feature map gives `d = C·H·W`; a
    /// 1-D array gives `n` points on the line).
    pub fn into_point_cloud(self, device: &Device) -> Result<Tensor<2>, ArrayError> {
        let Some((&points, rest)) = self.shape.split_first() else {
            return Err(self.shape_error("a point cloud needs at least one axis"));
        };
        let dim: usize = rest.iter().product();
        if points == 0 || dim == 0 {
            return Err(self.shape_error("a point cloud needs at least one point and one feature"));
        }
        Ok(self.into_tensor([points, dim], device))
    }

    /// The array as a matrix `[rows, columns]` on `device`; it must be 2-D and non-empty.
    pub fn into_matrix(self, device: &Device) -> Result<Tensor<2>, ArrayError> {
        match self.shape[..] {
            [rows, columns] if rows > 0 && columns > 0 => {
                Ok(self.into_tensor([rows, columns], device))
            }
            _ => Err(self.shape_error("expected a non-empty 2-D array")),
        }
    }

    fn into_tensor(self, shape: [usize; 2], device: &Device) -> Tensor<2> {
        let dtype = self.dtype();
        let data = match self.values {
            ArrayValues::F32(v) => TensorData::new(v, shape),
            ArrayValues::F64(v) => TensorData::new(v, shape),
        };
        Tensor::from_data(data, (device, dtype))
    }

    fn shape_error(&self, expected: &str) -> ArrayError {
        ArrayError::Shape {
            path: self.path.clone(),
            expected: expected.to_string(),
            shape: self.shape.clone(),
        }
    }
}

fn read_npy(path: &Path, bytes: &[u8]) -> Result<HostArray, ArrayError> {
    // Parser messages can span several lines (a caret under the header): keep the first.
    let malformed = |reason: String| ArrayError::Malformed {
        path: path.to_path_buf(),
        format: ".npy",
        reason: reason.lines().next().unwrap_or_default().trim().to_string(),
    };
    let file = npyz::NpyFile::new(bytes).map_err(|e| malformed(e.to_string()))?;
    let shape: Vec<usize> = file.shape().iter().map(|&s| s as usize).collect();
    let order = file.order();
    let element = match file.dtype() {
        npyz::DType::Plain(ts) if ts.type_char() == TypeChar::Float => ts.num_bytes(),
        _ => None,
    };
    let unsupported = |dtype: npyz::DType| ArrayError::UnsupportedElement {
        path: path.to_path_buf(),
        dtype: dtype.descr(),
    };
    // The header's promise is checked against the file's length before anything is allocated.
    let expected = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| malformed(format!("shape {shape:?} overflows")))?;
    if let Some(size) = element
        && expected.saturating_mul(size) > bytes.len()
    {
        return Err(malformed(format!(
            "header promises {expected} elements of {size} bytes, the file holds {} bytes",
            bytes.len()
        )));
    }
    let values = match element {
        Some(4) => ArrayValues::F32(
            file.into_vec::<f32>()
                .map_err(|e| malformed(e.to_string()))?,
        ),
        Some(8) => ArrayValues::F64(
            file.into_vec::<f64>()
                .map_err(|e| malformed(e.to_string()))?,
        ),
        _ => return Err(unsupported(file.dtype())),
    };
    if values.len() != expected {
        return Err(malformed(format!(
            "header promises {expected} elements, data holds {}",
            values.len()
        )));
    }
    let values = match (order, values) {
        (Order::C, values) => values,
        (Order::Fortran, ArrayValues::F32(v)) => ArrayValues::F32(fortran_to_row_major(&v, &shape)),
        (Order::Fortran, ArrayValues::F64(v)) => ArrayValues::F64(fortran_to_row_major(&v, &shape)),
    };
    Ok(HostArray {
        path: path.to_path_buf(),
        shape,
        values,
    })
}

/// Reorders column-major values of an array of `shape` into row-major order.
fn fortran_to_row_major<T: Copy>(values: &[T], shape: &[usize]) -> Vec<T> {
    let mut column_major_strides = Vec::with_capacity(shape.len());
    let mut stride = 1;
    for &extent in shape {
        column_major_strides.push(stride);
        stride *= extent;
    }
    let mut index = vec![0usize; shape.len()];
    let mut out = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        let offset: usize = index
            .iter()
            .zip(&column_major_strides)
            .map(|(i, s)| i * s)
            .sum();
        out.push(values[offset]);
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    out
}

/// A `.safetensors` file starts with an 8-byte little-endian header length, then a JSON header.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[8] == b'{'
}

fn read_safetensors(
    path: &Path,
    bytes: &[u8],
    tensor: Option<&str>,
) -> Result<HostArray, ArrayError> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ArrayError::Malformed {
        path: path.to_path_buf(),
        format: ".safetensors",
        reason: e.to_string(),
    })?;
    let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    names.sort();
    let name = match (tensor, names.as_slice()) {
        (Some(name), _) => name.to_string(),
        (None, [only]) => only.clone(),
        (None, _) => {
            return Err(ArrayError::AmbiguousTensor {
                path: path.to_path_buf(),
                names,
            });
        }
    };
    let view = file.tensor(&name).map_err(|_| ArrayError::MissingTensor {
        path: path.to_path_buf(),
        name: name.clone(),
        available: names.clone(),
    })?;
    let raw = view.data();
    let values = match view.dtype() {
        safetensors::Dtype::F32 => ArrayValues::F32(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        safetensors::Dtype::F64 => ArrayValues::F64(
            raw.chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
        ),
        other => {
            return Err(ArrayError::UnsupportedElement {
                path: path.to_path_buf(),
                dtype: format!("{other:?}"),
            });
        }
    };
    Ok(HostArray {
        path: path.to_path_buf(),
        shape: view.shape().to_vec(),
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_is_reordered() {
        // The 2x3 matrix [[1, 2, 3], [4, 5, 6]] stored column-major.
        let column_major = [1, 4, 2, 5, 3, 6];
        assert_eq!(
            fortran_to_row_major(&column_major, &[2, 3]),
            vec![1, 2, 3, 4, 5, 6]
        );
        // A 2x2x2 array: element (i, j, k) = 100 i + 10 j + k.
        let mut column_major = Vec::new();
        for k in 0..2 {
            for j in 0..2 {
                for i in 0..2 {
                    column_major.push(100 * i + 10 * j + k);
                }
            }
        }
        let expected = vec![0, 1, 10, 11, 100, 101, 110, 111];
        assert_eq!(fortran_to_row_major(&column_major, &[2, 2, 2]), expected);
    }
}
