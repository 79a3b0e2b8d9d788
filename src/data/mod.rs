//! Image classification data: readers, splits, normalisation, augmentation and batching.
//!
//! Every reader produces an [`ImageSet`]: 8-bit images `[N, C, H, W]` with their labels. Batches
//! are prepared on a background thread ([`batches`]) so that the cores stay busy with the model.

mod batching;
pub mod cifar;
pub mod idx;
pub mod image_folder;
mod source;

use std::path::PathBuf;

pub use batching::{Augmentation, Batch, BatchPlan, Normalization, batch_count, batches};
pub use source::{DEBIAN_FASHION_MNIST, DataSource, FASHION_MNIST_CLASSES, Splits, load_splits};

/// What can go wrong reading data. Every variant names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("{path}: cannot read")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's content is not what its format promises.
    #[error("{path}: {problem}")]
    Malformed {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Preparing batches failed, so a pass over the data would be incomplete.
    #[error("{0}")]
    Batching(String),
}

impl DataError {
    pub(crate) fn malformed(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Labelled 8-bit images, all of one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    /// Pixel values, row-major `[N, C, H, W]`.
    pub pixels: Vec<u8>,
    /// One label per image, each below `class_names.len()`.
    pub labels: Vec<u32>,
    /// One image's shape `[C, H, W]`.
    pub shape: [usize; 3],
    /// The name of each class.
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Builds a set, checking that pixels and labels agree in count and labels are in range.
    pub fn new(
        pixels: Vec<u8>,
        labels: Vec<u32>,
        shape: [usize; 3],
        class_names: Vec<String>,
        origin: &std::path::Path,
    ) -> Result<Self, DataError> {
        let per_image: usize = shape.iter().product();
        if per_image == 0 || pixels.len() != labels.len() * per_image {
            return Err(DataError::malformed(
                origin,
                format!(
                    "{} labels for {} pixel values of images {shape:?}",
                    labels.len(),
                    pixels.len()
                ),
            ));
        }
        if let Some((index, label)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= class_names.len())
        {
            return Err(DataError::malformed(
                origin,
                format!(
                    "label {label} of image {index} is out of range ({} classes)",
                    class_names.len()
                ),
            ));
        }
        Ok(Self {
            pixels,
            labels,
            shape,
            class_names,
        })
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set has no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The pixels of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        let size: usize = self.shape.iter().product();
        &self.pixels[index * size..(index + 1) * size]
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        Self {
            pixels: indices
                .iter()
                .flat_map(|&i| self.image(i))
                .copied()
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
            class_names: self.class_names.clone(),
        }
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    pub fn channel_statistics(&self) -> Normalization {
        let [channels, h, w] = self.shape;
        let plane = h * w;
        let mut sums = vec![(0.0f64, 0.0f64); channels];
        for image in self.pixels.chunks(channels * plane) {
            for (c, values) in image.chunks(plane).enumerate() {
                for &v in values {
                    let v = f64::from(v) / 255.0;
                    sums[c].0 += v;
                    sums[c].1 += v * v;
                }
            }
        }
        let count = (self.len() * plane).max(1) as f64;
        let (mean, std) = sums
            .iter()
            .map(|(s, q)| {
                let mean = s / count;
                let var = (q / count - mean * mean).max(0.0);
                (mean as f32, (var.sqrt() as f32).max(1e-6))
            })
            .unzip();
        Normalization { mean, std }
    }
}
