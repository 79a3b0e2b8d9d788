//! Every setting of a training run, recorded in the run's `config.json`.

use crate::data::{Augmentation, DataSource};
use crate::models::{Architecture, FeaturePairing, RemovalUnit, StemKind};

/// The optimiser.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// SGD with (PyTorch-style, undampened) momentum: the paper's choice.
    Sgd,
    /// Adam.
    Adam,
}

/// Which blocks the LaCoOT regulariser pulls towards identity.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum RegularisedBlocks {
    /// Every collapsible (shape-preserving) block.
    All,
    /// The paper's choice: in ResNets every collapsible block except the first of its stage (in
    /// ResNet-18, the four `layerS.1`); in MobileNetV2 and Swin-T every collapsible block.
    Paper,
}

/// A training run's settings. Defaults are the paper's (CIFAR-10, ResNet-18, 160 epochs).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// The architecture.
    pub architecture: Architecture,
    /// The stem (ResNets only).
    #[serde(default)]
    pub stem: Option<StemKind>,
    /// Channels of the first layer; the architecture's own when absent.
    pub width: Option<usize>,
    /// What a removable block is (MobileNetV2: whole blocks or depthwise units).
    #[serde(default)]
    pub unit: RemovalUnit,
    /// Which features of a block are compared (Swin-T: block output or MLP branch).
    #[serde(default)]
    pub pairing: FeaturePairing,
    /// The data set.
    pub data: DataSource,
    /// Fraction of each training class held out for validation.
    pub validation_fraction: f64,
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per batch (the point clouds have this many points).
    pub batch_size: usize,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// Initial learning rate.
    pub learning_rate: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Epochs, as fractions of `epochs`, after which the learning rate is multiplied by `gamma`.
    pub milestones: Vec<f64>,
    /// Learning-rate decay factor at each milestone.
    pub gamma: f64,
    /// Weight λ of the regulariser (0: plain training).
    pub lambda: f64,
    /// Which blocks are regularised.
    pub regularised_blocks: RegularisedBlocks,
    /// Random directions per max-sliced distance, fresh at every step.
    pub num_projections: usize,
    /// Order of the Wasserstein distance.
    pub p: f64,
    /// Training augmentation, if any.
    pub augmentation: Option<Augmentation>,
    /// Seed of initialisation, data order, augmentation and directions.
    pub seed: u64,
    /// PyTorch weights (`.pth` or `.safetensors`, torchvision names) to start from instead of a
    /// random initialisation.
    #[serde(default)]
    pub init_from: Option<std::path::PathBuf>,
    /// A prefix to strip from the keys of `init_from` (e.g. `backbone.` for a wrapper module).
    #[serde(default)]
    pub strip_prefix: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            architecture: Architecture::Resnet18,
            stem: None,
            width: None,
            unit: RemovalUnit::Block,
            pairing: FeaturePairing::Block,
            data: DataSource::FashionMnist { root: None },
            validation_fraction: 0.1,
            epochs: 160,
            batch_size: 128,
            optimizer: OptimizerKind::Sgd,
            learning_rate: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            milestones: vec![0.5, 0.75],
            gamma: 0.1,
            lambda: 5.0,
            regularised_blocks: RegularisedBlocks::All,
            num_projections: crate::ot::DEFAULT_NUM_PROJECTIONS,
            p: crate::ot::DEFAULT_P,
            augmentation: Some(Augmentation {
                crop_padding: 4,
                horizontal_flip: true,
            }),
            seed: 0,
            init_from: None,
            strip_prefix: None,
        }
    }
}

impl TrainConfig {
    /// The learning rate during `epoch` (0-based): multiplied by `gamma` at each milestone passed.
    pub fn learning_rate_at(&self, epoch: usize) -> f64 {
        let passed = self
            .milestones
            .iter()
            .filter(|&&m| epoch >= (m * self.epochs as f64).round() as usize)
            .count();
        self.learning_rate * self.gamma.powi(passed as i32)
    }

    /// Checks every setting before anything is read or written: the first problem, naming its
    /// command-line flag. Image-dependent limits (crop padding) are checked once the data is read.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |v: f64| v.is_finite();
        let milestones_ok = self
            .milestones
            .iter()
            .all(|m| finite(*m) && (0.0..=1.0).contains(m))
            && self.milestones.windows(2).all(|w| w[0] < w[1]);
        let problems = [
            (self.epochs == 0, "--epochs must be at least 1".to_string()),
            (
                self.batch_size < 2,
                "--batch-size must be at least 2 (a point cloud)".to_string(),
            ),
            (
                !(finite(self.learning_rate) && self.learning_rate > 0.0),
                format!(
                    "--lr must be a finite number > 0, not {}",
                    self.learning_rate
                ),
            ),
            (
                !(finite(self.momentum) && (0.0..1.0).contains(&self.momentum)),
                format!("--momentum must be in [0, 1), not {}", self.momentum),
            ),
            (
                !(finite(self.weight_decay) && self.weight_decay >= 0.0),
                format!(
                    "--weight-decay must be a finite number >= 0, not {}",
                    self.weight_decay
                ),
            ),
            (
                !milestones_ok,
                format!(
                    "--milestones must be increasing fractions of the epochs in [0, 1], not {:?}",
                    self.milestones
                ),
            ),
            (
                !(finite(self.gamma) && self.gamma > 0.0 && self.gamma <= 1.0),
                format!("--gamma must be in (0, 1], not {}", self.gamma),
            ),
            (
                !(finite(self.lambda) && self.lambda >= 0.0),
                format!("--lambda must be a finite number >= 0, not {}", self.lambda),
            ),
            (
                !(finite(self.p) && self.p >= 1.0),
                format!("--p must be a finite number >= 1, not {}", self.p),
            ),
            (
                !(finite(self.validation_fraction)
                    && (0.0..1.0).contains(&self.validation_fraction)),
                format!(
                    "--validation-fraction must be in [0, 1), not {}",
                    self.validation_fraction
                ),
            ),
            (
                self.width == Some(0),
                "--width must be at least 1".to_string(),
            ),
        ];
        match problems.into_iter().find(|(bad, _)| *bad) {
            Some((_, problem)) => Err(problem),
            None => crate::ot::check_num_projections(self.num_projections),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_follows_the_paper_milestones() {
        let config = TrainConfig::default();
        assert_eq!(config.learning_rate_at(0), 0.1);
        assert_eq!(config.learning_rate_at(79), 0.1);
        assert!((config.learning_rate_at(80) - 0.01).abs() < 1e-15);
        assert!((config.learning_rate_at(120) - 0.001).abs() < 1e-15);
        assert!(config.validate().is_ok());
        let bad = TrainConfig {
            batch_size: 1,
            ..TrainConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("--batch-size"));
        let nonsense = [
            TrainConfig {
                learning_rate: f64::INFINITY,
                ..TrainConfig::default()
            },
            TrainConfig {
                learning_rate: 0.0,
                ..TrainConfig::default()
            },
            TrainConfig {
                momentum: f64::NAN,
                ..TrainConfig::default()
            },
            TrainConfig {
                momentum: -1.0,
                ..TrainConfig::default()
            },
            TrainConfig {
                weight_decay: f64::NAN,
                ..TrainConfig::default()
            },
            TrainConfig {
                weight_decay: -1e-4,
                ..TrainConfig::default()
            },
            TrainConfig {
                milestones: vec![f64::NAN],
                ..TrainConfig::default()
            },
            TrainConfig {
                milestones: vec![0.75, 0.5],
                ..TrainConfig::default()
            },
            TrainConfig {
                milestones: vec![1.5],
                ..TrainConfig::default()
            },
            TrainConfig {
                gamma: -1.0,
                ..TrainConfig::default()
            },
            TrainConfig {
                lambda: f64::NAN,
                ..TrainConfig::default()
            },
            TrainConfig {
                num_projections: 0,
                ..TrainConfig::default()
            },
            TrainConfig {
                num_projections: 10_000_000,
                ..TrainConfig::default()
            },
            TrainConfig {
                p: f64::INFINITY,
                ..TrainConfig::default()
            },
            TrainConfig {
                p: 0.5,
                ..TrainConfig::default()
            },
            TrainConfig {
                validation_fraction: 1.0,
                ..TrainConfig::default()
            },
            TrainConfig {
                validation_fraction: f64::NAN,
                ..TrainConfig::default()
            },
            TrainConfig {
                width: Some(0),
                ..TrainConfig::default()
            },
            TrainConfig {
                epochs: 0,
                ..TrainConfig::default()
            },
        ];
        for config in nonsense {
            let problem = config.validate().unwrap_err();
            assert!(problem.starts_with("--"), "{problem}");
        }
    }
}
