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
    /// Keys of the file that the model does not have, except the buffers that lacoot derives
    /// instead of storing: torch's batch-norm counter `num_batches_tracked` and Swin's constant
    /// `relative_position_index`.
    pub unexpected: Vec<String>,
}

/// Loads a PyTorch checkpoint into `model` by name: a `torch.save` file (`.pth` / `.pt`, zip format)
/// or a `.safetensors` file with torchvision's key names. Missing or unexpected keys are an error
/// that lists them. The model's enum variants (e.g. [`super::Network`]'s) are not part of the names.
/// `strip_prefix` removes a wrapper's prefix (e.g. `backbone.`) from the file's keys.
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
            .skip_enum_variants(true)
            .allow_partial(true);
        if let Some(prefix) = &prefix {
            store = store.with_key_remapping(prefix, "");
        }
        model
            .load_from(&mut store)
            .map_err(|e| error(e.to_string()))?
    } else {
        // Indices stay as torchvision wrote them: lacoot's modules keep the parameter-free
        // placeholders (`mlp.1` GELU, `classifier.0` dropout) that leave gaps in the numbering.
        let mut store = PytorchStore::from_file(path)
            .skip_enum_variants(true)
            .map_indices_contiguous(false)
            .allow_partial(true);
        if let Some(prefix) = &prefix {
            store = store.with_key_remapping(prefix, "");
        }
        model
            .load_from(&mut store)
            .map_err(|e| error(e.to_string()))?
    };
    if !result.errors.is_empty() {
        let details: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        return Err(error(format!(
            "{} tensors do not fit: {}",
            details.len(),
            abbreviated(&details)
        )));
    }
    let report = LoadReport {
        applied: result.applied.len(),
        missing: result.missing.iter().map(|(key, _)| key.clone()).collect(),
        unexpected: result
            .unused
            .iter()
            .filter(|key| {
                !key.ends_with("num_batches_tracked") && !key.ends_with("relative_position_index")
            })
            .cloned()
            .collect(),
    };
    if !report.missing.is_empty() || !report.unexpected.is_empty() {
        let hint = wrapper_prefix(&report)
            .map(|prefix| {
                format!(
                    "; the file's keys start with '{prefix}': strip it (--strip-prefix {prefix})"
                )
            })
            .unwrap_or_default();
        return Err(error(format!(
            "does not match the model: {} missing keys [{}], {} unexpected keys [{}]{hint}",
            report.missing.len(),
            abbreviated(&report.missing),
            report.unexpected.len(),
            abbreviated(&report.unexpected),
        )));
    }
    Ok(report)
}

/// The first few keys of a list, then how many more there are (error messages stay one short
/// line however many keys differ).
pub fn abbreviated(keys: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = keys[..keys.len().min(SHOWN)].join(", ");
    if keys.len() > SHOWN {
        text.push_str(&format!(", … {} more", keys.len() - SHOWN));
    }
    text
}

/// A prefix (up to its first dot) that every unexpected key has and that, removed, turns an
/// unexpected key into a missing one: the sign of weights saved from a wrapper module.
fn wrapper_prefix(report: &LoadReport) -> Option<String> {
    let first = report.unexpected.first()?;
    let prefix = &first[..first.find('.')? + 1];
    let shared = report.unexpected.iter().all(|key| key.starts_with(prefix));
    let fits = report
        .unexpected
        .iter()
        .any(|key| report.missing.iter().any(|m| key[prefix.len()..] == *m));
    (shared && fits).then(|| prefix.to_string())
}

/// Whether the file is a `.safetensors` file, by its header (8-byte length, then JSON).
fn is_safetensors(path: &Path) -> bool {
    let mut header = [0u8; 9];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .is_ok_and(|()| header[8] == b'{')
}
