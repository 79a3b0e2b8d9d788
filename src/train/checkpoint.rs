//! Checkpoints: the model (burnpack, which keeps parameter ids for the optimiser state), the
//! optimiser state and the trainer's state, each folder with a checksum list.
//!
//! `checkpoints/last` and `checkpoints/best` are committed together, as one folder that replaces
//! the previous `checkpoints/` only once complete: a crash leaves both at the previous epoch or
//! both at the new one, never one of each.

use std::path::Path;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::{BurnpackStore, ModuleSnapshot};

use super::{EpochMetrics, TrainError};
use crate::fsutil::{
    CHECKSUMS_FILE, recover_dir, staging_dir, swap_in_dir, verify_checksums, write_checksums,
};
use crate::models::weights::abbreviated;

/// What the loop needs to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// How many direction sets the sampler has drawn.
    pub direction_draws: u64,
    /// Best validation accuracy so far; `None` before the first epoch or without a validation
    /// split (then `best` is always the latest epoch).
    pub best_validation_accuracy: Option<f64>,
    /// The epoch (1-based) `checkpoints/best` holds.
    pub best_epoch: usize,
    /// Every epoch's metrics so far: `metrics.jsonl` is rewritten from them, so a resumed run's
    /// file never loses, repeats or keeps a cut line.
    #[serde(default)]
    pub history: Vec<EpochMetrics>,
}

impl TrainerState {
    /// The state before the first epoch.
    pub fn fresh() -> Self {
        Self {
            epochs_done: 0,
            direction_draws: 0,
            best_validation_accuracy: None,
            best_epoch: 0,
            history: Vec::new(),
        }
    }
}

const MODEL_FILE: &str = "model.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const STATE_FILE: &str = "state.json";
const LAST: &str = "last";
const BEST: &str = "best";

/// Commits one epoch into `checkpoints` (the run's `checkpoints/` folder): `last` with the model,
/// optimiser and state; `best` with the model and state when `improved`, else the previous `best`
/// kept (hard-linked, not copied, where the file system allows).
pub(crate) fn commit_epoch<M: Module + ModuleSnapshot>(
    checkpoints: &Path,
    model: &M,
    optimizer: &ModuleOptimizer,
    state: &TrainerState,
    improved: bool,
) -> Result<(), TrainError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    recover_dir(checkpoints).map_err(io(checkpoints))?;
    let staging = staging_dir(checkpoints).map_err(io(checkpoints))?;
    let last = staging.join(LAST);
    std::fs::create_dir(&last).map_err(io(&last))?;
    let mut store = BurnpackStore::from_file(last.join(MODEL_FILE))
        .auto_extension(false)
        .overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| TrainError::Checkpoint(last.clone(), e.to_string()))?;
    optimizer
        .save(last.join(OPTIMIZER_FILE))
        .map_err(|e| TrainError::Checkpoint(last.clone(), e.to_string()))?;
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    std::fs::write(last.join(STATE_FILE), json).map_err(io(&last))?;
    write_checksums(&last, &[MODEL_FILE, OPTIMIZER_FILE, STATE_FILE]).map_err(io(&last))?;

    let best = staging.join(BEST);
    std::fs::create_dir(&best).map_err(io(&best))?;
    let source = if improved {
        last.clone()
    } else {
        checkpoints.join(BEST)
    };
    for name in [MODEL_FILE, STATE_FILE] {
        link_or_copy(&source.join(name), &best.join(name)).map_err(io(&best.join(name)))?;
    }
    let previous_sums = source.join(CHECKSUMS_FILE);
    if improved || !previous_sums.exists() {
        write_checksums(&best, &[MODEL_FILE, STATE_FILE]).map_err(io(&best))?;
    } else {
        link_or_copy(&previous_sums, &best.join(CHECKSUMS_FILE)).map_err(io(&best))?;
    }
    swap_in_dir(&staging, checkpoints).map_err(io(checkpoints))
}

fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(|_| ()))
}

/// Whether `dir` holds a complete checkpoint (after repairing an interrupted commit).
pub(crate) fn exists(dir: &Path) -> bool {
    if let Some(checkpoints) = dir.parent() {
        let _ = recover_dir(checkpoints);
    }
    dir.join(MODEL_FILE).is_file()
}

/// Loads the model weights of checkpoint `dir` into `model`, after checking the files' checksums.
pub(crate) fn load_model<M: Module + ModuleSnapshot>(
    dir: &Path,
    model: &mut M,
) -> Result<(), TrainError> {
    let path = dir.join(MODEL_FILE);
    if !exists(dir) {
        return Err(TrainError::Checkpoint(
            path,
            "no such checkpoint (the run has not finished an epoch yet)".into(),
        ));
    }
    verify_checksums(dir).map_err(|problem| TrainError::Checkpoint(dir.to_path_buf(), problem))?;
    let mut store = BurnpackStore::from_file(&path).auto_extension(false);
    let result = model
        .load_from(&mut store)
        .map_err(|e| TrainError::Checkpoint(path.clone(), e.to_string()))?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        return Err(TrainError::Checkpoint(
            path,
            format!(
                "does not match the run's model: {} missing tensors [{}], {} that do not fit [{}]",
                result.missing.len(),
                abbreviated(
                    &result
                        .missing
                        .iter()
                        .map(|(k, _)| k.clone())
                        .collect::<Vec<_>>()
                ),
                result.errors.len(),
                abbreviated(
                    &result
                        .errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                )
            ),
        ));
    }
    Ok(())
}

/// Loads the trainer state of checkpoint `dir` (checksums checked by [`load_model`]).
pub(crate) fn load_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|source| TrainError::Io {
        path: state_path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint(state_path, e.to_string()))
}

/// Loads the optimiser state and trainer state of checkpoint `dir`.
pub(crate) fn load_training_state(
    dir: &Path,
    optimizer: ModuleOptimizer,
) -> Result<(ModuleOptimizer, TrainerState), TrainError> {
    let optimizer_path = dir.join(OPTIMIZER_FILE);
    let optimizer = optimizer
        .load(&optimizer_path)
        .map_err(|e| TrainError::Checkpoint(optimizer_path, e.to_string()))?;
    Ok((optimizer, load_state(dir)?))
}
