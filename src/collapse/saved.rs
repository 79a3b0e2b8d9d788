//! The shallower model a collapse hands back: weights of the kept blocks (safetensors) and a
//! manifest (JSON) that rebuilds the architecture, removals included.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};

use super::CollapseError;
use crate::data::{DataSource, Normalization};
use crate::device::default_device;
use crate::fsutil::{recover_dir, staging_dir, swap_in_dir, verify_checksums, write_checksums};
use crate::models::weights::abbreviated;
use crate::models::{BlockNetwork, ModelError, ModelSpec, Network};

const WEIGHTS_FILE: &str = "model.safetensors";
const MANIFEST_FILE: &str = "manifest.json";

/// Everything needed to rebuild and evaluate a saved model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The architecture, with the removed blocks.
    pub model: ModelSpec,
    /// Input normalisation.
    pub normalization: Normalization,
    /// The data the model was trained and measured on.
    pub data: DataSource,
    /// The validation fraction and seed of the training run (they define the splits).
    pub validation_fraction: f64,
    /// The training run's seed.
    pub seed: u64,
    /// The run the model comes from.
    pub source_run: PathBuf,
    /// Which copy of the data the run recorded (evaluation checks it reads the same).
    #[serde(default)]
    pub data_description: String,
    /// The split the collapse chose on (`validation`, or `train` when asked).
    #[serde(default)]
    pub selection_split: String,
    /// Accuracy on that split, measured before saving.
    #[serde(default)]
    pub selection_accuracy: f64,
    /// Test accuracy measured before saving (reported, never used for the choice).
    pub test_accuracy: f64,
}

impl Manifest {
    /// The manifest of the run recorded in `record`, before any collapse: no removals, no
    /// accuracies.
    pub fn before_collapse(record: &crate::train::RunRecord, run: &Path) -> Self {
        Self {
            model: record.model.clone(),
            normalization: record.normalization.clone(),
            data: record.config.data.clone(),
            validation_fraction: record.config.validation_fraction,
            seed: record.config.seed,
            source_run: run.to_path_buf(),
            data_description: record.data_description.clone(),
            selection_split: String::new(),
            selection_accuracy: 0.0,
            test_accuracy: 0.0,
        }
    }

    /// This manifest for the network `report` chose: its removals and accuracies.
    pub fn for_chosen(&self, report: &super::CollapseReport) -> Self {
        let chosen = &report.steps[report.chosen];
        Self {
            model: ModelSpec {
                removed_blocks: report.order[..chosen.blocks_removed].to_vec(),
                ..self.model.clone()
            },
            selection_split: report.selection_split.clone(),
            selection_accuracy: chosen.selection.accuracy,
            test_accuracy: chosen.test.accuracy,
            ..self.clone()
        }
    }
}

/// Writes `dir/model.safetensors` (only the kept blocks' weights) and `dir/manifest.json`,
/// atomically as a folder.
pub fn save_model(dir: &Path, model: &Network, manifest: &Manifest) -> Result<(), CollapseError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CollapseError::Io { path, source }
    };
    let staging = staging_dir(dir).map_err(io(dir))?;
    let removed: Vec<String> = model
        .removed_blocks()
        .into_iter()
        .map(|b| format!("{b}."))
        .collect();
    let kept: Vec<String> = model
        .collect(None, None, true)
        .into_iter()
        .map(|t| t.name)
        .filter(|name| !removed.iter().any(|prefix| name.starts_with(prefix)))
        .collect();
    let weights = staging.join(WEIGHTS_FILE);
    let mut store = SafetensorsStore::from_file(&weights)
        .with_full_paths(kept)
        .skip_enum_variants(true)
        .overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| weights_error(&weights, e.to_string()))?;
    let json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    std::fs::write(staging.join(MANIFEST_FILE), json).map_err(io(&staging))?;
    write_checksums(&staging, &[WEIGHTS_FILE, MANIFEST_FILE]).map_err(io(&staging))?;
    swap_in_dir(&staging, dir).map_err(io(dir))
}

/// Reads a saved model: checks its files' checksums, rebuilds it from the manifest and loads its
/// weights (eval mode, plain device).
pub fn load_model(dir: &Path) -> Result<(Manifest, Network), CollapseError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    recover_dir(dir).map_err(|source| CollapseError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !manifest_path.is_file() {
        return Err(weights_error(
            dir,
            "not a saved lacoot model (no manifest.json)".into(),
        ));
    }
    verify_checksums(dir).map_err(|problem| weights_error(dir, problem))?;
    let text = std::fs::read_to_string(&manifest_path).map_err(|source| CollapseError::Io {
        path: manifest_path.clone(),
        source,
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| weights_error(&manifest_path, format!("not a valid manifest: {e}")))?;
    let mut model = manifest
        .model
        .build(&default_device())
        .map_err(|e| weights_error(&manifest_path, e.to_string()))?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(weights_error(&weights, "missing".into()));
    }
    let mut store = SafetensorsStore::from_file(&weights)
        .skip_enum_variants(true)
        .allow_partial(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| weights_error(&weights, e.to_string()))?;
    let removed: Vec<String> = model
        .removed_blocks()
        .into_iter()
        .map(|b| format!("{b}."))
        .collect();
    let missing: Vec<String> = result
        .missing
        .iter()
        .map(|(key, _)| key.clone())
        .filter(|key| !removed.iter().any(|prefix| key.starts_with(prefix)))
        .collect();
    if !missing.is_empty() || !result.errors.is_empty() || !result.unused.is_empty() {
        return Err(weights_error(
            &weights,
            format!(
                "does not match its manifest: {} missing [{}], {} unexpected [{}], {} that do not fit",
                missing.len(),
                abbreviated(&missing),
                result.unused.len(),
                abbreviated(&result.unused),
                result.errors.len()
            ),
        ));
    }
    Ok((manifest, model.valid()))
}

fn weights_error(path: &Path, reason: String) -> CollapseError {
    CollapseError::Model(ModelError::Weights {
        path: path.to_path_buf(),
        reason,
    })
}
