//! CIFAR-10 and CIFAR-100 binary batches (`data_batch_1.bin`, `train.bin`, …).

use std::path::Path;

use super::{DataError, ImageSet};

/// Which CIFAR binary layout a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarVariant {
    /// One label byte, then 3072 pixel bytes.
    Cifar10,
    /// A coarse and a fine label byte (lacoot uses the fine label), then 3072 pixel bytes.
    Cifar100,
}

impl CifarVariant {
    fn label_bytes(self) -> usize {
        match self {
            Self::Cifar10 => 1,
            Self::Cifar100 => 2,
        }
    }

    fn num_classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }
}

/// The CIFAR-10 class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const PIXELS: usize = 3 * 32 * 32;

/// Reads and concatenates CIFAR binary batch files.
pub fn read_cifar(files: &[&Path], variant: CifarVariant) -> Result<ImageSet, DataError> {
    let record = variant.label_bytes() + PIXELS;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for &path in files {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(DataError::malformed(
                path,
                format!(
                    "{} bytes is not a whole number of {record}-byte {variant:?} records",
                    bytes.len()
                ),
            ));
        }
        for (index, chunk) in bytes.chunks_exact(record).enumerate() {
            let label = u32::from(chunk[variant.label_bytes() - 1]);
            if label as usize >= variant.num_classes() {
                return Err(DataError::malformed(
                    path,
                    format!(
                        "record {index} has label {label}, out of range for {variant:?} ({} classes)",
                        variant.num_classes()
                    ),
                ));
            }
            labels.push(label);
            pixels.extend_from_slice(&chunk[variant.label_bytes()..]);
        }
    }
    let class_names = match variant {
        CifarVariant::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        CifarVariant::Cifar100 => (0..100).map(|c| format!("class {c}")).collect(),
    };
    let origin = files.first().copied().unwrap_or(Path::new("."));
    ImageSet::new(pixels, labels, [3, 32, 32], class_names, origin)
}
