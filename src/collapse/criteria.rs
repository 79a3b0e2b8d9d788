//! How removable each block is: one score per collapsible block, lower = more removable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use burn::tensor::{DType, Tensor};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::CollapseError;
use crate::data::{BatchPlan, ImageSet, Normalization, batches};
use crate::device::default_device;
use crate::models::{BlockFeatures, BlockNetwork};
use crate::ot::{DirectionSampler, max_sliced_wasserstein, point_cloud, sliced_wasserstein};

/// A way to rank blocks for removal.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Criterion {
    /// Max-sliced Wasserstein distance between the block's input and output (the paper).
    Mswd,
    /// Sliced Wasserstein distance (mean over directions).
    Swd,
    /// Block influence: 1 − mean cosine similarity of each sample's input and output (ShortGPT).
    BlockInfluence,
    /// Mean angle between each sample's input and output, arccos(cosine) / π.
    Angular,
    /// A seeded random order (the baseline any criterion must beat).
    Random,
    /// Greedy: remove the block whose removal raises the validation loss least, then repeat (SLEB).
    LossDrop,
}

impl Criterion {
    /// Whether the score is a fixed per-block number (all but `LossDrop`, which re-ranks after each
    /// removal).
    pub fn is_static(self) -> bool {
        self != Self::LossDrop
    }
}

/// Settings of the distance criteria.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScoreSettings {
    /// Directions per distance: more than in training, so the ranking is stable.
    pub num_projections: usize,
    /// Seed of the directions and of the random criterion.
    pub seed: u64,
    /// Images per batch (each batch is a point cloud).
    pub batch_size: usize,
}

/// Scores every block in `candidates` on `set` with a static criterion: the mean over the set's
/// batches (all images, eval mode), the distances of order `p` (the run's). Lower = more
/// removable; a score that is not finite (NaN weights, say) is an error naming the block.
pub fn static_scores<N: BlockNetwork>(
    model: &N,
    candidates: &BTreeSet<String>,
    set: &Arc<ImageSet>,
    normalization: &Normalization,
    criterion: Criterion,
    settings: &ScoreSettings,
    p: f64,
) -> Result<BTreeMap<String, f64>, CollapseError> {
    if criterion == Criterion::Random {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(settings.seed);
        return Ok(candidates
            .iter()
            .map(|name| (name.clone(), rng.random::<f64>()))
            .collect());
    }
    let device = default_device();
    let mut sampler = DirectionSampler::new(settings.seed);
    let plan = BatchPlan {
        batch_size: settings.batch_size,
        shuffle: false,
        drop_last: set.len() >= settings.batch_size,
        augmentation: None,
        seed: 0,
    };
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for batch in batches(set.clone(), normalization.clone(), plan, 0) {
        let (images, _) = batch?.to_tensors(&device);
        let (_, features) = model.forward_capturing(images, candidates);
        for block in features {
            let score = block_score(&block, criterion, settings, p, &mut sampler)?;
            if !score.is_finite() {
                return Err(CollapseError::NonFinite(format!(
                    "the {criterion:?} score of block {} is {score}",
                    block.name
                )));
            }
            let entry = sums.entry(block.name).or_default();
            entry.0 += score;
            entry.1 += 1;
        }
    }
    Ok(sums
        .into_iter()
        .map(|(name, (sum, count))| (name, sum / count.max(1) as f64))
        .collect())
}

fn block_score(
    block: &BlockFeatures,
    criterion: Criterion,
    settings: &ScoreSettings,
    p: f64,
    sampler: &mut DirectionSampler,
) -> Result<f64, crate::ot::OtError> {
    let x = point_cloud(block.input.clone());
    let y = point_cloud(block.output.clone());
    let [_, dim] = x.dims();
    Ok(match criterion {
        Criterion::Mswd | Criterion::Swd => {
            let dirs = sampler.sample(dim, settings.num_projections, &x.device(), DType::F32)?;
            if criterion == Criterion::Mswd {
                max_sliced_wasserstein(x, y, &dirs, p, None)?.distance
            } else {
                sliced_wasserstein(x, y, &dirs, p)?.distance
            }
        }
        Criterion::BlockInfluence => 1.0 - mean(cosines(x, y)),
        Criterion::Angular => {
            let angles: Vec<f64> = cosines(x, y)
                .into_iter()
                .map(|c| c.clamp(-1.0, 1.0).acos() / std::f64::consts::PI)
                .collect();
            mean(angles)
        }
        Criterion::Random | Criterion::LossDrop => {
            unreachable!("not a per-block feature score")
        }
    })
}

/// The cosine similarity of each sample's input and output.
fn cosines(x: Tensor<2>, y: Tensor<2>) -> Vec<f64> {
    let dot = (x.clone() * y.clone()).sum_dim(1);
    let norms = (x.square().sum_dim(1) * y.square().sum_dim(1))
        .sqrt()
        .clamp_min(1e-12);
    (dot / norms)
        .try_into_vec_as::<f64>()
        .expect("host read of a small tensor")
}

fn mean(values: Vec<f64>) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}
