//! Every setting of a training run, recorded in the run's `config.json`.

use std::collections::BTreeMap;

use crate::data::{Augmentation, DataSource};
use crate::models::{Architecture, FeaturePairing, RemovalUnit, StemKind};
use crate::ot::DirectionKind;

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

/// The most gradient-ascent steps a training step may spend per block.
pub const MAX_ASCENT_STEPS: usize = 100;

/// How the regulariser weighs the distances of its blocks.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum BlockWeighting {
    /// The paper's plain mean over the regularised blocks.
    #[default]
    Uniform,
    /// Each block's distance weighted by its share of the regularised blocks' MACs (weights with
    /// mean 1): the blocks whose removal saves most are pulled hardest.
    Macs,
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
    /// Epochs over which λ ramps linearly from 0 to `lambda`, step by step (0: the full λ from the
    /// first step, as in the paper).
    #[serde(default)]
    pub lambda_warmup: f64,
    /// How the blocks' distances are weighed in the regulariser.
    #[serde(default)]
    pub block_weighting: BlockWeighting,
    /// Factors on single blocks' weights, after `block_weighting` (a block not named keeps
    /// factor 1): a per-block λ.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub block_scales: BTreeMap<String, f64>,
    /// How the random directions are drawn.
    #[serde(default)]
    pub directions: DirectionKind,
    /// Gradient-ascent steps refining each block's max-sliced direction at every step (0: the
    /// paper's max over random directions).
    #[serde(default)]
    pub ascent_steps: usize,
    /// Regularise `MSW_p^p` (W2² at p = 2) instead of `MSW_p`.
    #[serde(default)]
    pub squared: bool,
    /// Label smoothing of the training cross-entropy: the target puts `1 − α` on the label and
    /// `α / classes` on every class (0: plain one-hot targets, as in the paper). Evaluation
    /// always reports the plain cross-entropy.
    #[serde(default)]
    pub label_smoothing: f64,
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
            lambda_warmup: 0.0,
            block_weighting: BlockWeighting::Uniform,
            block_scales: BTreeMap::new(),
            directions: DirectionKind::Random,
            ascent_steps: 0,
            squared: false,
            label_smoothing: 0.0,
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

    /// The regulariser's weight at batch `batch` of `batches` in `epoch` (0-based): `lambda`, ramped
    /// linearly from 0 over the first `lambda_warmup` epochs.
    pub fn lambda_at(&self, epoch: usize, batch: usize, batches: usize) -> f64 {
        if self.lambda_warmup <= 0.0 {
            return self.lambda;
        }
        let progress = epoch as f64 + batch as f64 / batches.max(1) as f64;
        self.lambda * (progress / self.lambda_warmup).min(1.0)
    }

    /// The `lacoot train` command line that makes these settings, its words quoted for a shell
    /// (see [`TrainConfig::train_flags`]).
    pub fn train_command(&self) -> String {
        let words: Vec<String> = self.train_flags().iter().map(|w| shell_word(w)).collect();
        format!("lacoot train {}", words.join(" "))
    }

    /// The `lacoot train` arguments that make these settings: `--model`, `--data`, `--epochs` and
    /// `--lambda` always, every other setting where it differs from the command's default, in the
    /// order `--help` lists them. `--seed` and `--out` are left to the caller.
    pub fn train_flags(&self) -> Vec<String> {
        let defaults = TrainConfig::default();
        let mut flags = Vec::new();
        let mut flag = |name: &str, value: Option<String>| {
            flags.push(format!("--{name}"));
            flags.extend(value);
        };
        flag("model", Some(value_name(&self.architecture)));
        if let Some(stem) = &self.stem {
            flag("stem", Some(value_name(stem)));
        }
        if let Some(width) = self.width {
            flag("width", Some(width.to_string()));
        }
        if self.unit != defaults.unit {
            flag("unit", Some(value_name(&self.unit)));
        }
        if self.pairing != defaults.pairing {
            flag("pairing", Some(value_name(&self.pairing)));
        }
        let (data, folder) = self.data.name_and_folder();
        flag("data", Some(data.to_string()));
        if let Some(folder) = folder {
            flag("data-dir", Some(folder.display().to_string()));
        }
        let differs = |a: f64, b: f64| a != b;
        if differs(self.validation_fraction, defaults.validation_fraction) {
            flag(
                "validation-fraction",
                Some(self.validation_fraction.to_string()),
            );
        }
        flag("epochs", Some(self.epochs.to_string()));
        if self.batch_size != defaults.batch_size {
            flag("batch-size", Some(self.batch_size.to_string()));
        }
        if self.optimizer != defaults.optimizer {
            flag("optimizer", Some(value_name(&self.optimizer)));
        }
        for (name, value, default) in [
            ("lr", self.learning_rate, defaults.learning_rate),
            ("momentum", self.momentum, defaults.momentum),
            ("weight-decay", self.weight_decay, defaults.weight_decay),
        ] {
            if differs(value, default) {
                flag(name, Some(value.to_string()));
            }
        }
        if self.milestones != defaults.milestones {
            let milestones: Vec<String> = self.milestones.iter().map(f64::to_string).collect();
            flag("milestones", Some(milestones.join(",")));
        }
        if differs(self.gamma, defaults.gamma) {
            flag("gamma", Some(self.gamma.to_string()));
        }
        flag("lambda", Some(self.lambda.to_string()));
        if self.regularised_blocks != defaults.regularised_blocks {
            flag("blocks", Some(value_name(&self.regularised_blocks)));
        }
        if self.num_projections != defaults.num_projections {
            flag("num-projections", Some(self.num_projections.to_string()));
        }
        if differs(self.p, defaults.p) {
            flag("p", Some(self.p.to_string()));
        }
        if differs(self.lambda_warmup, defaults.lambda_warmup) {
            flag("lambda-warmup", Some(self.lambda_warmup.to_string()));
        }
        if self.block_weighting != defaults.block_weighting {
            flag("block-weighting", Some(value_name(&self.block_weighting)));
        }
        for (block, factor) in &self.block_scales {
            flag("block-scale", Some(format!("{block}={factor}")));
        }
        if self.directions != defaults.directions {
            flag("directions", Some(value_name(&self.directions)));
        }
        if self.ascent_steps != defaults.ascent_steps {
            flag("ascent-steps", Some(self.ascent_steps.to_string()));
        }
        if self.squared {
            flag("squared", None);
        }
        if differs(self.label_smoothing, defaults.label_smoothing) {
            flag("label-smoothing", Some(self.label_smoothing.to_string()));
        }
        let (crop_padding, flip) = self
            .augmentation
            .map_or((0, false), |a| (a.crop_padding, a.horizontal_flip));
        let default_crop = defaults.augmentation.map_or(0, |a| a.crop_padding);
        if crop_padding != default_crop {
            flag("crop-padding", Some(crop_padding.to_string()));
        }
        if !flip {
            flag("no-flip", None);
        }
        if let Some(weights) = &self.init_from {
            flag("init-from", Some(weights.display().to_string()));
        }
        if let Some(prefix) = &self.strip_prefix {
            flag("strip-prefix", Some(prefix.clone()));
        }
        flags
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
        let bad_scale = self
            .block_scales
            .iter()
            .find(|(_, factor)| !(finite(**factor) && **factor >= 0.0));
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
                !(finite(self.lambda_warmup) && self.lambda_warmup >= 0.0),
                format!(
                    "--lambda-warmup must be a finite number of epochs >= 0, not {}",
                    self.lambda_warmup
                ),
            ),
            (
                bad_scale.is_some(),
                bad_scale.map_or_else(String::new, |(block, factor)| {
                    format!(
                        "--block-scale {block}={factor}: the factor must be a finite number >= 0"
                    )
                }),
            ),
            (
                self.ascent_steps > MAX_ASCENT_STEPS,
                format!(
                    "--ascent-steps must be at most {MAX_ASCENT_STEPS}, not {}",
                    self.ascent_steps
                ),
            ),
            (
                !(finite(self.label_smoothing) && (0.0..1.0).contains(&self.label_smoothing)),
                format!(
                    "--label-smoothing must be in [0, 1), not {}",
                    self.label_smoothing
                ),
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

/// The command-line name of a value of a flag's enum.
fn value_name<T: clap::ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

/// `word` as one shell word: as it is when it holds only safe characters, else single-quoted.
fn shell_word(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_.,/:=+@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_of_the_paper_settings_name_only_the_essentials() {
        let config = TrainConfig {
            width: Some(16),
            epochs: 12,
            lambda: 1.0,
            regularised_blocks: RegularisedBlocks::Paper,
            ..TrainConfig::default()
        };
        assert_eq!(
            config.train_command(),
            "lacoot train --model resnet18 --width 16 --data fashion-mnist --epochs 12 --lambda 1 --blocks paper"
        );
        let odd = TrainConfig {
            data: DataSource::Mnist {
                root: "/data/my mnist".into(),
            },
            squared: true,
            label_smoothing: 0.1,
            augmentation: None,
            ..TrainConfig::default()
        };
        assert_eq!(
            odd.train_command(),
            "lacoot train --model resnet18 --data mnist --data-dir '/data/my mnist' --epochs 160 --lambda 5 --squared --label-smoothing 0.1 --crop-padding 0 --no-flip"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn lambda_ramps_linearly_over_the_warmup_then_stays() {
        let plain = TrainConfig::default();
        assert_eq!(plain.lambda_at(0, 0, 10), plain.lambda);
        let warm = TrainConfig {
            lambda: 4.0,
            lambda_warmup: 2.0,
            ..TrainConfig::default()
        };
        assert_eq!(warm.lambda_at(0, 0, 10), 0.0);
        assert!((warm.lambda_at(0, 5, 10) - 1.0).abs() < 1e-12);
        assert!((warm.lambda_at(1, 0, 10) - 2.0).abs() < 1e-12);
        assert!((warm.lambda_at(1, 5, 10) - 3.0).abs() < 1e-12);
        assert_eq!(warm.lambda_at(2, 0, 10), 4.0);
        assert_eq!(warm.lambda_at(7, 3, 10), 4.0);
    }

    #[test]
    fn a_config_from_before_the_levers_reads_with_the_paper_regulariser() {
        let mut json = serde_json::to_value(TrainConfig::default()).unwrap();
        let object = json.as_object_mut().unwrap();
        for key in [
            "lambda_warmup",
            "block_weighting",
            "directions",
            "ascent_steps",
            "squared",
            "label_smoothing",
        ] {
            assert!(object.remove(key).is_some(), "{key}");
        }
        let read: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(read, TrainConfig::default());
    }

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
                label_smoothing: 1.0,
                ..TrainConfig::default()
            },
            TrainConfig {
                label_smoothing: -0.1,
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
                block_scales: [("layer1.0".to_string(), -1.0)].into(),
                ..TrainConfig::default()
            },
            TrainConfig {
                block_scales: [("layer1.0".to_string(), f64::INFINITY)].into(),
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
            TrainConfig {
                lambda_warmup: -1.0,
                ..TrainConfig::default()
            },
            TrainConfig {
                lambda_warmup: f64::NAN,
                ..TrainConfig::default()
            },
            TrainConfig {
                ascent_steps: MAX_ASCENT_STEPS + 1,
                ..TrainConfig::default()
            },
        ];
        for config in nonsense {
            let problem = config.validate().unwrap_err();
            assert!(problem.starts_with("--"), "{problem}");
        }
    }
}
