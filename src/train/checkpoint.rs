//! Checkpoints: the model (burnpack, which keeps parameter ids for the optimiser state), the
//! optimiser state and the trainer's state, written as a folder that replaces the previous one
//! only once complete.

use std::path::Path;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::{BurnpackStore, ModuleSnapshot};

use super::TrainError;

/// What the loop needs to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// How many direction sets the sampler has drawn.
    pub direction_draws: u64,
    /// Best validation accuracy so far and the epoch (1-based) it was reached.
    pub best_validation_accuracy: f64,
    /// The epoch of the best validation accuracy.
    pub best_epoch: usize,
}

const MODEL_FILE: &str = "model.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const STATE_FILE: &str = "state.json";

/// Writes `dir` (e.g. `checkpoints/last`) atomically: into `dir.tmp`, then swapped in.
pub(crate) fn save<M: Module + ModuleSnapshot>(
    dir: &Path,
    model: &M,
    optimizer: Option<&ModuleOptimizer>,
    state: &TrainerState,
) -> Result<(), TrainError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    let staging = crate::fsutil::staging_dir(dir).map_err(io(dir))?;
    let mut store = BurnpackStore::from_file(staging.join(MODEL_FILE))
        .auto_extension(false)
        .overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| TrainError::Checkpoint(staging.clone(), e.to_string()))?;
    if let Some(optimizer) = optimizer {
        optimizer
            .save(staging.join(OPTIMIZER_FILE))
            .map_err(|e| TrainError::Checkpoint(staging.clone(), e.to_string()))?;
    }
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    std::fs::write(staging.join(STATE_FILE), json).map_err(io(&staging))?;
    crate::fsutil::swap_in_dir(&staging, dir).map_err(io(dir))?;
    Ok(())
}

/// Loads the model weights of checkpoint `dir` into `model`.
pub(crate) fn load_model<M: Module + ModuleSnapshot>(
    dir: &Path,
    model: &mut M,
) -> Result<(), TrainError> {
    let path = dir.join(MODEL_FILE);
    if !path.is_file() {
        return Err(TrainError::Checkpoint(path, "no such checkpoint".into()));
    }
    let mut store = BurnpackStore::from_file(&path).auto_extension(false);
    let result = model
        .load_from(&mut store)
        .map_err(|e| TrainError::Checkpoint(path.clone(), e.to_string()))?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        return Err(TrainError::Checkpoint(
            path,
            format!(
                "does not match the run's model (missing: {:?}, errors: {})",
                result.missing,
                result.errors.len()
            ),
        ));
    }
    Ok(())
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
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|source| TrainError::Io {
        path: state_path.clone(),
        source,
    })?;
    let state = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(state_path, e.to_string()))?;
    Ok((optimizer, state))
}
