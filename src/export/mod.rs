//! Taking a model out of lacoot: an ONNX graph for deployment runtimes ([`onnx`]) and
//! torchvision-named weights with the PyTorch lines that load them ([`torchvision`]).

pub mod onnx;
pub mod torchvision;

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::collapse::saved::load_model;
use crate::data::Normalization;
use crate::device::default_device;
use crate::fsutil::write_atomic;
use crate::models::{BlockNetwork, ModelSpec, Network};
use crate::train::{RunPaths, load_run_model};

/// What can go wrong while exporting.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The network has a part that has no graph form.
    #[error("{0}")]
    Graph(String),
    /// The model to export could not be read.
    #[error("{0}")]
    Source(String),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A network with what a user needs to feed it and to know where it comes from.
pub struct ExportSource {
    /// The network, in eval mode, removed blocks applied.
    pub network: Network,
    /// Its description (architecture, removed blocks).
    pub spec: ModelSpec,
    /// The normalisation its input expects.
    pub normalization: Normalization,
    /// Where it comes from: a run's checkpoint or a collapsed model.
    pub origin: String,
    /// Accuracies lacoot measured, each with the split it was measured on.
    pub accuracies: Vec<(String, f64)>,
}

impl ExportSource {
    /// A model saved by `lacoot collapse` (the folder holding `manifest.json`).
    pub fn from_saved_model(dir: &Path) -> Result<Self, ExportError> {
        let (manifest, network) =
            load_model(dir).map_err(|e| ExportError::Source(e.to_string()))?;
        let mut accuracies = Vec::new();
        if !manifest.selection_split.is_empty() {
            accuracies.push((
                manifest.selection_split.clone(),
                manifest.selection_accuracy,
            ));
        }
        accuracies.push(("test".into(), manifest.test_accuracy));
        Ok(Self {
            network,
            spec: manifest.model,
            normalization: manifest.normalization,
            origin: format!("collapsed model {}", dir.display()),
            accuracies,
        })
    }

    /// The full network of a training run, from its `best` or `last` checkpoint.
    pub fn from_run(run_dir: &Path, checkpoint: Checkpoint) -> Result<Self, ExportError> {
        let run = RunPaths::new(run_dir);
        let dir = match checkpoint {
            Checkpoint::Best => run.best(),
            Checkpoint::Last => run.last(),
        };
        let (record, network) =
            load_run_model(&run, &dir).map_err(|e| ExportError::Source(e.to_string()))?;
        let label = match checkpoint {
            Checkpoint::Best => "best",
            Checkpoint::Last => "last",
        };
        Ok(Self {
            network,
            spec: record.model,
            normalization: record.normalization,
            origin: format!("run {} ({label} checkpoint)", run_dir.display()),
            accuracies: Vec::new(),
        })
    }

    /// Key–value pairs that describe the model to whoever loads the exported file.
    pub fn metadata(&self) -> Vec<(String, String)> {
        let removed: Vec<String> = self.network.removed_blocks().into_iter().collect();
        let mut pairs = vec![
            (
                "lacoot.model".to_string(),
                serde_json::to_string(&self.spec).expect("a spec serialises"),
            ),
            (
                "lacoot.removed_blocks".to_string(),
                serde_json::to_string(&removed).expect("names serialise"),
            ),
            (
                "lacoot.normalization".to_string(),
                serde_json::to_string(&self.normalization).expect("numbers serialise"),
            ),
            (
                "lacoot.input".to_string(),
                "NCHW float32 pixels scaled to [0, 1], then (x - mean) / std per channel with \
                 lacoot.normalization"
                    .to_string(),
            ),
            ("lacoot.origin".to_string(), self.origin.clone()),
        ];
        for (split, accuracy) in &self.accuracies {
            pairs.push((format!("lacoot.accuracy.{split}"), format!("{accuracy:.6}")));
        }
        pairs
    }
}

/// Images in the reference batch.
const REFERENCE_BATCH: usize = 4;

/// A fixed batch of inputs (`input`, `[4, C, H, W]`) and the logits lacoot computes for it
/// (`logits`), as safetensors bytes.
pub fn reference_batch(source: &ExportSource) -> Result<Vec<u8>, ExportError> {
    let [c, h, w] = source.network.input_shape();
    let shape = [REFERENCE_BATCH, c, h, w];
    let count = shape.iter().product::<usize>();
    // A fixed pattern in about [-2, 2]; no randomness, so the file is reproducible.
    let input: Vec<f32> = (0..count)
        .map(|i| ((i * 7919 % 1009) as f32 / 252.0 - 2.0) * ((i % 7) as f32 / 7.0 + 0.5))
        .collect();
    let logits = source.network.forward(Tensor::from_data(
        TensorData::new(input.clone(), shape),
        &default_device(),
    ));
    let logits_shape = logits.dims().to_vec();
    let logits: Vec<f32> = logits
        .into_data()
        .try_to_vec()
        .map_err(|e| ExportError::Graph(format!("cannot read the reference logits: {e:?}")))?;
    let input_bytes: &[u8] = bytemuck::cast_slice(&input);
    let logits_bytes: &[u8] = bytemuck::cast_slice(&logits);
    let failure = |e: safetensors::SafeTensorError| {
        ExportError::Graph(format!("cannot write the reference batch: {e}"))
    };
    let views = vec![
        (
            "input",
            TensorView::new(Dtype::F32, shape.to_vec(), input_bytes).map_err(failure)?,
        ),
        (
            "logits",
            TensorView::new(Dtype::F32, logits_shape, logits_bytes).map_err(failure)?,
        ),
    ];
    safetensors::serialize(views, None).map_err(failure)
}

/// Which checkpoint of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpoint {
    /// The epoch with the best validation accuracy.
    Best,
    /// The last epoch.
    Last,
}

/// The file beside an exported ONNX model `path` that holds its reference batch
/// (`model.onnx` → `model.reference.safetensors`).
pub fn reference_path(path: &Path) -> PathBuf {
    path.with_extension("reference.safetensors")
}

/// Writes the source's network as an ONNX model to `path` and its reference batch to
/// [`reference_path`] (each atomically); returns the model's size in bytes.
pub fn write_onnx(
    source: &ExportSource,
    path: &Path,
    batch: onnx::BatchAxis,
) -> Result<usize, ExportError> {
    let bytes = onnx::to_onnx(
        &source.network,
        source.spec.num_classes,
        batch,
        &source.metadata(),
    )?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    let reference = reference_path(path);
    write_atomic(&reference, &reference_batch(source)?).map_err(io(&reference))?;
    write_atomic(path, &bytes).map_err(io(path))?;
    Ok(bytes.len())
}
