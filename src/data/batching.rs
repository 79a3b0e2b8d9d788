//! Turning images into normalised, augmented batches on a background thread.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::{DataError, ImageSet};

/// How many prepared batches may wait for the model.
const PREFETCH: usize = 2;

/// Per-channel normalisation of pixels scaled to [0, 1]: `(x − mean) / std`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Mean of each channel.
    pub mean: Vec<f32>,
    /// Standard deviation of each channel.
    pub std: Vec<f32>,
}

/// Training augmentation, applied to raw pixels before normalisation.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augmentation {
    /// Pad each side by this many zero pixels, then crop back to the original size at a random
    /// offset (0 disables).
    pub crop_padding: usize,
    /// Mirror each image left-right with probability 1/2.
    pub horizontal_flip: bool,
}

impl Augmentation {
    /// The augmentation a random-crop padding (0: no crop) and a flip choice describe; none when
    /// both are off.
    pub fn from_flags(crop_padding: usize, horizontal_flip: bool) -> Option<Self> {
        (crop_padding > 0 || horizontal_flip).then_some(Self {
            crop_padding,
            horizontal_flip,
        })
    }
}

/// How a pass over a set is cut into batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchPlan {
    /// Images per batch.
    pub batch_size: usize,
    /// Visit the images in a seeded random order.
    pub shuffle: bool,
    /// Drop the last, incomplete batch (training: every batch is a point cloud of the same size).
    pub drop_last: bool,
    /// Augmentation, or none (evaluation).
    pub augmentation: Option<Augmentation>,
    /// Seed of the order and the augmentation; combined with the epoch, so each epoch differs and a
    /// resumed run sees the same batches as an uninterrupted one.
    pub seed: u64,
}

/// A batch on the host: normalised images `[n, C, H, W]` and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Normalised pixel values, row-major.
    pub images: Vec<f32>,
    /// Class labels.
    pub labels: Vec<i64>,
    /// `[n, C, H, W]`.
    pub shape: [usize; 4],
}

impl Batch {
    /// The batch as tensors on `device`: images `[n, C, H, W]` and labels `[n]`.
    pub fn to_tensors(&self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let images = Tensor::from_data(TensorData::new(self.images.clone(), self.shape), device);
        let labels = Tensor::from_data(self.labels.as_slice(), device);
        (images, labels)
    }
}

/// The batches of one epoch, prepared on a background thread while the caller consumes them.
///
/// Yields exactly [`batch_count`] batches. If the worker dies (a panic while assembling a batch) the
/// iterator yields one error saying so instead of ending early, so a pass over the data is either
/// complete or fails: it never looks like a shorter set.
pub fn batches(
    set: Arc<ImageSet>,
    normalization: Normalization,
    plan: BatchPlan,
    epoch: u64,
) -> impl Iterator<Item = Result<Batch, DataError>> {
    let (sender, receiver) = sync_channel(PREFETCH);
    let expected = batch_count(set.len(), &plan);
    let worker = std::thread::spawn(move || {
        let mut rng =
            Xoshiro256PlusPlus::seed_from_u64(plan.seed ^ epoch.wrapping_mul(0x9E37_79B9));
        let mut order: Vec<usize> = (0..set.len()).collect();
        if plan.shuffle {
            order.shuffle(&mut rng);
        }
        for chunk in order.chunks(plan.batch_size.max(1)) {
            if plan.drop_last && chunk.len() < plan.batch_size {
                break;
            }
            let batch = assemble(&set, chunk, &normalization, plan.augmentation, &mut rng);
            if sender.send(batch).is_err() {
                return;
            }
        }
    });
    ReceiverIter {
        receiver,
        worker: Some(worker),
        expected,
        received: 0,
    }
}

struct ReceiverIter {
    receiver: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
    expected: usize,
    received: usize,
}

impl Iterator for ReceiverIter {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Ok(batch) = self.receiver.recv() {
            self.received += 1;
            return Some(Ok(batch));
        }
        // The worker is done: it either finished the plan or died.
        let worker = self.worker.take()?;
        let failure = match worker.join() {
            Err(panic) => Some(format!(
                "the batch worker failed: {}",
                panic_message(&panic)
            )),
            Ok(()) if self.received != self.expected => Some(format!(
                "the batch worker delivered {} of {} batches",
                self.received, self.expected
            )),
            Ok(()) => None,
        };
        failure.map(|problem| Err(DataError::Batching(problem)))
    }
}

/// The text a panic carried, if it was a string.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// The number of batches `batches` yields for `len` images.
pub fn batch_count(len: usize, plan: &BatchPlan) -> usize {
    let size = plan.batch_size.max(1);
    if plan.drop_last {
        len / size
    } else {
        len.div_ceil(size)
    }
}

fn assemble(
    set: &ImageSet,
    indices: &[usize],
    normalization: &Normalization,
    augmentation: Option<Augmentation>,
    rng: &mut Xoshiro256PlusPlus,
) -> Batch {
    let [channels, h, w] = set.shape;
    let mut images = Vec::with_capacity(indices.len() * channels * h * w);
    for &index in indices {
        let pixels = set.image(index);
        let (dy, dx, flip) = match augmentation {
            Some(aug) => {
                let pad = aug.crop_padding as i64;
                let mut offset = || rng.random_range(-pad..=pad) as isize;
                let (dy, dx) = (offset(), offset());
                (dy, dx, aug.horizontal_flip && rng.random_bool(0.5))
            }
            None => (0, 0, false),
        };
        for c in 0..channels {
            let (mean, std) = (normalization.mean[c], normalization.std[c]);
            let plane = &pixels[c * h * w..(c + 1) * h * w];
            for y in 0..h {
                for x in 0..w {
                    let sx = if flip { w - 1 - x } else { x } as isize + dx;
                    let sy = y as isize + dy;
                    let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                    let raw = if inside {
                        plane[sy as usize * w + sx as usize]
                    } else {
                        0
                    };
                    images.push((f32::from(raw) / 255.0 - mean) / std);
                }
            }
        }
    }
    Batch {
        images,
        labels: indices.iter().map(|&i| i64::from(set.labels[i])).collect(),
        shape: [indices.len(), channels, h, w],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp_set(count: usize) -> Arc<ImageSet> {
        let pixels: Vec<u8> = (0..count * 4).map(|v| (v % 251) as u8).collect();
        Arc::new(
            ImageSet::new(
                pixels,
                (0..count as u32).map(|i| i % 3).collect(),
                [1, 2, 2],
                vec!["a".into(), "b".into(), "c".into()],
                std::path::Path::new("test"),
            )
            .unwrap(),
        )
    }

    fn identity() -> Normalization {
        Normalization {
            mean: vec![0.0],
            std: vec![1.0 / 255.0],
        }
    }

    #[test]
    fn evaluation_keeps_every_sample_and_training_drops_the_last_partial_batch() {
        let set = ramp_set(10);
        let eval = BatchPlan {
            batch_size: 4,
            shuffle: false,
            drop_last: false,
            augmentation: None,
            seed: 0,
        };
        let sizes: Vec<usize> = batches(set.clone(), identity(), eval, 0)
            .map(|b| b.unwrap().shape[0])
            .collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(batch_count(10, &eval), 3);
        let first = batches(set.clone(), identity(), eval, 0)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(first.images[..4], [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(first.labels, [0, 1, 2, 0]);

        let train = BatchPlan {
            drop_last: true,
            shuffle: true,
            ..eval
        };
        let sizes: Vec<usize> = batches(set, identity(), train, 0)
            .map(|b| b.unwrap().shape[0])
            .collect();
        assert_eq!(sizes, [4, 4]);
        assert_eq!(batch_count(10, &train), 2);
    }

    #[test]
    fn a_dead_worker_is_an_error_not_the_end_of_the_data() {
        let set = ramp_set(10);
        let wrong_channels = Normalization {
            mean: vec![],
            std: vec![],
        };
        let plan = BatchPlan {
            batch_size: 4,
            shuffle: false,
            drop_last: false,
            augmentation: None,
            seed: 0,
        };
        let outcomes: Vec<_> = batches(set, wrong_channels, plan, 0).collect();
        assert_eq!(outcomes.len(), 1);
        let error = outcomes[0].as_ref().unwrap_err().to_string();
        assert!(error.contains("batch worker failed"), "{error}");
    }

    #[test]
    fn order_and_augmentation_follow_seed_and_epoch() {
        let set = ramp_set(12);
        let plan = BatchPlan {
            batch_size: 12,
            shuffle: true,
            drop_last: true,
            augmentation: Some(Augmentation {
                crop_padding: 1,
                horizontal_flip: true,
            }),
            seed: 5,
        };
        let run = |epoch| {
            batches(set.clone(), identity(), plan, epoch)
                .next()
                .unwrap()
                .unwrap()
        };
        assert_eq!(run(0), run(0));
        assert_ne!(run(0).labels, run(1).labels);
    }

    #[test]
    fn flip_and_crop_move_pixels_and_pad_with_zeros() {
        let set = ramp_set(1);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
        let flipped = assemble(
            &set,
            &[0],
            &identity(),
            Some(Augmentation {
                crop_padding: 0,
                horizontal_flip: true,
            }),
            &mut rng,
        );
        // Either unchanged or mirrored, never anything else.
        let mirrored = [1.0, 0.0, 3.0, 2.0];
        assert!(flipped.images == [0.0, 1.0, 2.0, 3.0] || flipped.images == mirrored);
        for _ in 0..20 {
            let cropped = assemble(
                &set,
                &[0],
                &identity(),
                Some(Augmentation {
                    crop_padding: 2,
                    horizontal_flip: false,
                }),
                &mut rng,
            );
            // Every value is an original pixel or a zero from the padding.
            assert!(
                cropped
                    .images
                    .iter()
                    .all(|v| [0.0, 1.0, 2.0, 3.0].contains(v))
            );
        }
    }
}
