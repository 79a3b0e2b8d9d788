//! Loading and saving weights by torchvision `state_dict` names.

use std::path::Path;

use burn::module::Module;
use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore};

use super::ModelError;

/// What a load matched: keys applied, and keys present on one side only.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Parameters and buffers loaded.
    pub applied: usize,
    /// Keys of the model that the file lacks.
    pub missing: Vec<String>,
    /// Keys of the file that the model does not have (`num_batches_tracked` excluded: torch's
    /// batch-norm counter, which burn does not keep).
    pub unexpected: Vec<String>,
}

/// Loads a PyTorch checkpoint into `model` by name: a `torch.save` file (`.pth` / `.pt`, zip format)
/// or a `.safetensors` file with torchvision's key names. Missing or unexpected keys are an error
/// that lists them; `strip_prefix` removes a wrapper's prefix (e.g. `backbone.`) from the file's keys.
pub fn load_torch_weights<M: Module + ModuleSnapshot>(
    model: &mut M,
    path: &Path,
    strip_prefix: Option<&str>,
) -> Result<LoadReport, ModelError> {
    let error = |reason: String| ModelError::Weights {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(error("no such file".into()));
    }
    let prefix = strip_prefix.map(|p| format!("^{}", regex::escape(p)));
    let result = if is_safetensors(path) {
        let mut store = SafetensorsStore::from_file(path)
            .with_from_adapter(PyTorchToBurnAdapter)
            .allow_partial(true);
        if let Some(prefix) = &prefix {
            store = store.with_key_remapping(prefix, "");
        }
        model
            .load_from(&mut store)
            .map_err(|e| error(e.to_string()))?
    } else {
        let mut store = PytorchStore::from_file(path).allow_partial(true);
        if let Some(prefix) = &prefix {
            store = store.with_key_remapping(prefix, "");
        }
        model
            .load_from(&mut store)
            .map_err(|e| error(e.to_string()))?
    };
    if !result.errors.is_empty() {
        let details: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        return Err(error(details.join("; ")));
    }
    let report = LoadReport {
        applied: result.applied.len(),
        missing: result.missing.iter().map(|(key, _)| key.clone()).collect(),
        unexpected: result
            .unused
            .iter()
            .filter(|key| !key.ends_with("num_batches_tracked"))
            .cloned()
            .collect(),
    };
    if !report.missing.is_empty() || !report.unexpected.is_empty() {
        return Err(error(format!(
            "does not match the model: missing keys [{}], unexpected keys [{}]",
            report.missing.join(", "),
            report.unexpected.join(", ")
        )));
    }
    Ok(report)
}

/// Whether the file is a `.safetensors` file, by its header (8-byte length, then JSON).
fn is_safetensors(path: &Path) -> bool {
    let mut header = [0u8; 9];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .is_ok_and(|()| header[8] == b'{')
}
