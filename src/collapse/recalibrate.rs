//! Batch-norm recalibration: after a removal, the layers behind the removed block see slightly
//! different activations than the ones their running statistics were averaged over in training.
//! Re-estimating those statistics from training images, augmented as in training, changes no
//! trained weight: it is the one adjustment a collapse may make without finetuning, and it is off
//! unless asked for.

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::module::Module;
use burn::store::bridge::{from_data, to_data};
use burn::store::{ModuleSnapshot, PathFilter};
use burn::tensor::TensorData;

use super::CollapseError;
use crate::data::{Augmentation, BatchPlan, ImageSet, Normalization, batches};
use crate::device::autodiff_device;
use crate::models::{BlockNetwork, Network};

/// Seed of the order the recalibration batches are drawn in (fixed: the same network always gets
/// the same statistics).
const RECALIBRATION_SEED: u64 = 0x5EED_BA7C;

/// `network` with the running statistics of every batch-norm layer re-estimated from `passes`
/// training-mode forward passes over batches of `batch_size` images of `set`: shuffled with a
/// fixed seed, augmented with `augmentation` (the training run's, so that the statistics describe
/// the images the weights were trained to normalise), gradients off.
///
/// Each pass moves the statistics with the layer's own momentum, as in training; the result is the
/// mean of the statistics seen after each pass of the second half. That average covers about
/// `passes / 2` batches instead of the `1 / momentum` an exponential average remembers (10 at
/// burn's default momentum of 0.1), and by the second half the trained statistics weigh at most
/// `(1 − momentum)^(passes / 2)` (3e-5 after 200 passes). Weights, biases and the affine
/// parameters are not touched. A network without batch norm (Swin-T), or `passes == 0`, is
/// returned unchanged.
pub fn recalibrate_batch_norm(
    network: &Network,
    set: &Arc<ImageSet>,
    normalization: &Normalization,
    augmentation: Option<Augmentation>,
    passes: usize,
    batch_size: usize,
) -> Result<Network, CollapseError> {
    let has_statistics = !network
        .collect(Some(running_statistics()), None, false)
        .is_empty();
    if passes == 0 || !has_statistics {
        return Ok(network.clone());
    }
    let batch_size = batch_size.min(set.len());
    if batch_size < 2 {
        return Err(CollapseError::Settings(format!(
            "batch-norm recalibration needs batches of at least 2 images; the training split has {}",
            set.len()
        )));
    }
    let device = autodiff_device();
    let model = network.clone().fork(&device).train().no_grad();
    let plan = BatchPlan {
        batch_size,
        shuffle: true,
        drop_last: true,
        augmentation,
        seed: RECALIBRATION_SEED,
    };
    let mut endless =
        (0u64..).flat_map(|epoch| batches(set.clone(), normalization.clone(), plan, epoch));
    let mut average = StatisticsAverage::default();
    for pass in 0..passes {
        let batch = endless.next().expect("an endless sequence of epochs")?;
        let (images, _) = batch.to_tensors(&device);
        drop(model.forward(images));
        if pass >= passes / 2 {
            average.add(&model)?;
        }
    }
    let mut recalibrated = model.valid();
    average.apply_to(&mut recalibrated)?;
    Ok(recalibrated)
}

/// Whether a tensor path names a batch-norm running statistic.
fn is_running_statistic(path: &str, _container: &str) -> bool {
    path.ends_with("running_mean") || path.ends_with("running_var")
}

/// The filter that keeps the batch-norm running statistics.
fn running_statistics() -> PathFilter {
    PathFilter::new().with_predicate(is_running_statistic)
}

/// Sums of the running statistics over snapshots, by tensor path.
#[derive(Default)]
struct StatisticsAverage {
    sums: BTreeMap<String, (Vec<f64>, Vec<usize>)>,
    snapshots: usize,
}

impl StatisticsAverage {
    /// Adds the running statistics `model` holds now. (burn publishes a layer's update when the
    /// layer next reads its statistics, so a snapshot may lag one batch; over an average of many
    /// snapshots that shifts the window by one batch.)
    fn add(&mut self, model: &Network) -> Result<(), CollapseError> {
        for tensor in model.collect(Some(running_statistics()), None, false) {
            let data = to_data(&tensor).map_err(|e| snapshot_error(&tensor.name, e))?;
            let values: Vec<f32> = data
                .convert::<f32>()
                .try_to_vec()
                .map_err(|e| snapshot_error(&tensor.name, format!("{e:?}")))?;
            let (sum, _) = self
                .sums
                .entry(tensor.name.clone())
                .or_insert_with(|| (vec![0.0; values.len()], tensor.shape.to_vec()));
            for (total, value) in sum.iter_mut().zip(values) {
                *total += f64::from(value);
            }
        }
        self.snapshots += 1;
        Ok(())
    }

    /// Replaces `model`'s running statistics by the averages.
    fn apply_to(self, model: &mut Network) -> Result<(), CollapseError> {
        let count = self.snapshots as f64;
        let tensors = self
            .sums
            .into_iter()
            .map(|(name, (sum, shape))| {
                let mean: Vec<f32> = sum.iter().map(|total| (total / count) as f32).collect();
                from_data(TensorData::new(mean, shape), name, None)
            })
            .collect();
        let result = model.apply(tensors, Some(running_statistics()), None, false);
        match result.errors.first() {
            None => Ok(()),
            Some(error) => Err(snapshot_error("running statistics", format!("{error:?}"))),
        }
    }
}

/// A running statistic that could not be read or written back.
fn snapshot_error(name: &str, problem: impl std::fmt::Display) -> CollapseError {
    CollapseError::Recalibration(format!("could not handle {name}: {problem}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use crate::models::{Architecture, ModelSpec};
    use burn::store::ModuleSnapshot;
    use burn::store::bridge::to_data;
    use burn::tensor::TensorData;

    /// A small ResNet and a set of `count` random 3x8x8 images.
    fn network_and_images(count: usize) -> (Network, Arc<ImageSet>, Normalization) {
        let spec = ModelSpec {
            width: 4,
            ..ModelSpec::new(Architecture::Resnet18, 3, 8, 3)
        };
        let network = spec.build(&default_device()).expect("a valid spec").valid();
        let mut state = 12345u64;
        let pixels: Vec<u8> = (0..count * 3 * 64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect();
        let labels = (0..count as u32).map(|i| i % 3).collect();
        let set = ImageSet::new(
            pixels,
            labels,
            [3, 8, 8],
            vec!["a".into(), "b".into(), "c".into()],
            std::path::Path::new("test"),
        )
        .expect("a valid set");
        let normalization = Normalization {
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
        };
        (network, Arc::new(set), normalization)
    }

    /// The whole set as one batch of images on `device`.
    fn whole_set(
        set: &Arc<ImageSet>,
        normalization: &Normalization,
        device: &burn::tensor::Device,
    ) -> burn::tensor::Tensor<4> {
        let plan = BatchPlan {
            batch_size: set.len(),
            shuffle: false,
            drop_last: false,
            augmentation: None,
            seed: 0,
        };
        let batch = batches(set.clone(), normalization.clone(), plan, 0)
            .next()
            .expect("one batch")
            .expect("a valid batch");
        batch.to_tensors(device).0
    }

    fn logits(network: &Network, set: &Arc<ImageSet>, normalization: &Normalization) -> Vec<f32> {
        network
            .forward(whole_set(set, normalization, &default_device()))
            .into_data()
            .try_to_vec()
            .expect("f32 logits")
    }

    /// Every named tensor of `network` whose name does not contain `running`: its weights.
    fn weights(network: &Network) -> Vec<(String, TensorData)> {
        network
            .collect(None, None, true)
            .iter()
            .filter(|t| !t.name.contains("running"))
            .map(|t| (t.name.clone(), to_data(t).expect("readable tensor")))
            .collect()
    }

    #[test]
    fn recalibrated_statistics_are_the_batch_statistics_of_a_fixed_batch() {
        // With the whole set in every batch, each pass sees the same batch statistics, so after
        // enough passes the eval-mode network normalises with them: its logits are those of a
        // training-mode forward of that batch, whatever the statistics were before.
        let (network, set, normalization) = network_and_images(16);
        // Statistics of other images (brighter, with more contrast) no longer fit these.
        let other = Normalization {
            mean: vec![-0.5; 3],
            std: vec![0.1; 3],
        };
        let broken =
            recalibrate_batch_norm(&network, &set, &other, None, 40, 16).expect("recalibrated");
        let recalibrated = recalibrate_batch_norm(&broken, &set, &normalization, None, 300, 16)
            .expect("recalibrated");
        let batch_statistics: Vec<f32> = {
            let device = autodiff_device();
            let model = network.fork(&device).train().no_grad();
            let images = whole_set(&set, &normalization, &device);
            model.forward(images).into_data().try_to_vec().expect("f32")
        };
        let before = logits(&broken, &set, &normalization);
        let after = logits(&recalibrated, &set, &normalization);
        let error = |a: &[f32]| {
            a.iter()
                .zip(&batch_statistics)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        let scale = batch_statistics.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(error(&before) > 0.1 * scale, "the corruption must show");
        // The broken variances are about 100 times too large, and 0.9^150 of them remain
        // (observed: 2e-5 of the largest logit).
        assert!(
            error(&after) < 1e-3 * scale,
            "recalibrated logits {after:?} differ from the batch-statistics logits {batch_statistics:?}"
        );
    }

    /// The running mean of the first batch-norm layer (right after the stem convolution).
    fn first_running_mean(network: &Network) -> Vec<f32> {
        let stem = network
            .collect(None, None, false)
            .into_iter()
            .find(|t| t.name.ends_with("bn1.running_mean"))
            .expect("a stem batch norm");
        to_data(&stem)
            .expect("readable")
            .convert::<f32>()
            .try_to_vec()
            .expect("f32")
    }

    #[test]
    fn the_average_over_passes_estimates_the_whole_set_not_the_last_batches() {
        // Batches of 8 from 64 images: each batch's mean is noisy, but every epoch's batches
        // cover the set, so an average over many passes finds the set's own statistics, which
        // passes over the whole set at once give exactly. An exponential average (what the last
        // pass leaves in the layer) remembers about 10 batches and misses by far more.
        let (network, set, normalization) = network_and_images(64);
        let statistics_of = |images: &Arc<ImageSet>, batch_size, passes| {
            first_running_mean(
                &recalibrate_batch_norm(&network, images, &normalization, None, passes, batch_size)
                    .expect("recalibrated"),
            )
        };
        let distance = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        };
        let exact = statistics_of(&set, 64, 300);
        // One batch's miss: the first 8 images of the set as a batch of their own.
        let (_, first_eight, _) = network_and_images(8);
        let one_batch_miss = distance(&statistics_of(&first_eight, 8, 300), &exact);
        let averaged_miss = distance(&statistics_of(&set, 8, 1000), &exact);
        // Observed over random initialisations: 0.002–0.003 of one batch's miss, and 0.05–0.09
        // for the last pass's statistics (the average left out).
        assert!(
            averaged_miss < 0.015 * one_batch_miss,
            "the averaged running mean misses the set's by {averaged_miss}, one batch by {one_batch_miss}"
        );
    }

    #[test]
    fn zero_passes_change_nothing_and_weights_are_never_touched() {
        let (network, set, normalization) = network_and_images(8);
        let same =
            recalibrate_batch_norm(&network, &set, &normalization, None, 0, 4).expect("no-op");
        assert_eq!(
            logits(&same, &set, &normalization),
            logits(&network, &set, &normalization)
        );
        let recalibrated = recalibrate_batch_norm(&network, &set, &normalization, None, 3, 4)
            .expect("recalibrated");
        assert_ne!(
            logits(&recalibrated, &set, &normalization),
            logits(&network, &set, &normalization),
            "three passes move the statistics"
        );
        let trained = weights(&network);
        assert!(trained.len() > 20, "{} weight tensors", trained.len());
        assert_eq!(weights(&recalibrated), trained);
    }

    #[test]
    fn a_network_without_batch_norm_is_returned_as_it_is() {
        // Swin-T normalises with LayerNorm, which keeps no statistics: nothing to estimate, so
        // not even a split too small for a batch is a problem.
        let spec = ModelSpec {
            width: 12,
            ..ModelSpec::new(Architecture::SwinT, 3, 8, 3)
        };
        let swin = spec.build(&default_device()).expect("a valid spec").valid();
        let (_, one_image, normalization) = network_and_images(1);
        let same = recalibrate_batch_norm(&swin, &one_image, &normalization, None, 50, 128)
            .expect("nothing to do");
        assert_eq!(
            logits(&same, &one_image, &normalization),
            logits(&swin, &one_image, &normalization)
        );
    }

    #[test]
    fn a_split_too_small_for_a_batch_is_refused() {
        let (network, set, normalization) = network_and_images(1);
        let error = recalibrate_batch_norm(&network, &set, &normalization, None, 5, 128)
            .expect_err("one image is no batch");
        assert!(error.to_string().contains("at least 2 images"), "{error}");
    }
}
