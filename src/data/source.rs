//! Where a data set comes from, and its train / validation / test splits.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;

use super::cifar::{CifarVariant, read_cifar};
use super::idx::{IdxArray, decode_idx, read_idx};
use super::image_folder::read_image_folder;
use super::{DataError, ImageSet};

/// Where Debian's `dataset-fashion-mnist` package installs the full data set.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The Fashion-MNIST class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The stratified Fashion-MNIST subset shipped inside lacoot (`data/fashion-mnist-subset`).
const EMBEDDED: [(&str, &[u8]); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        include_bytes!("../../data/fashion-mnist-subset/train-images-idx3-ubyte.gz"),
    ),
    (
        "train-labels-idx1-ubyte.gz",
        include_bytes!("../../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz"),
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        include_bytes!("../../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz"),
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        include_bytes!("../../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz"),
    ),
];

/// A data set and where to find it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DataSource {
    /// Fashion-MNIST from a folder of IDX files; without a folder, Debian's full copy when it is
    /// installed, else the subset embedded in lacoot.
    FashionMnist {
        /// A folder holding the four IDX files (raw or .gz).
        root: Option<PathBuf>,
    },
    /// The stratified Fashion-MNIST subset embedded in lacoot (500 training and 100 test images per
    /// class), which needs no files at all.
    FashionMnistSubset,
    /// MNIST from a folder of IDX files.
    Mnist {
        /// A folder holding the four IDX files (raw or .gz).
        root: PathBuf,
    },
    /// CIFAR-10 from its binary batches (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`).
    Cifar10 {
        /// The folder holding the batches.
        root: PathBuf,
    },
    /// CIFAR-100 from its binary files (`train.bin`, `test.bin`), fine labels.
    Cifar100 {
        /// The folder holding the files.
        root: PathBuf,
    },
    /// Image folders, one sub-folder per class.
    ImageFolder {
        /// The training images.
        train: PathBuf,
        /// The test images.
        test: PathBuf,
    },
}

impl DataSource {
    /// A source from a name (`fashion-mnist`, `mnist`, `cifar10`, `cifar100`, `image-folder`) and an
    /// optional folder (for `image-folder`, the folder holding `train/` and `test/`).
    pub fn from_name(name: &str, root: Option<PathBuf>) -> Result<Self, String> {
        // Recorded absolute, so that a run can be evaluated from any working directory.
        let root = root
            .map(|root| {
                std::path::absolute(&root)
                    .map_err(|e| format!("{}: cannot resolve the folder: {e}", root.display()))
            })
            .transpose()?;
        let need = |root: Option<PathBuf>| root.ok_or(format!("data set '{name}' needs a folder"));
        Ok(match name {
            "fashion-mnist" => Self::FashionMnist { root },
            "fashion-mnist-subset" => Self::FashionMnistSubset,
            "mnist" => Self::Mnist { root: need(root)? },
            "cifar10" => Self::Cifar10 { root: need(root)? },
            "cifar100" => Self::Cifar100 { root: need(root)? },
            "image-folder" => {
                let root = need(root)?;
                Self::ImageFolder {
                    train: root.join("train"),
                    test: root.join("test"),
                }
            }
            other => {
                return Err(format!(
                    "unknown data set '{other}' (fashion-mnist, fashion-mnist-subset, mnist, cifar10, cifar100, image-folder)"
                ));
            }
        })
    }
}

impl DataSource {
    /// The name and folder [`DataSource::from_name`] takes to make this source.
    pub fn name_and_folder(&self) -> (&'static str, Option<PathBuf>) {
        match self {
            Self::FashionMnist { root } => ("fashion-mnist", root.clone()),
            Self::FashionMnistSubset => ("fashion-mnist-subset", None),
            Self::Mnist { root } => ("mnist", Some(root.clone())),
            Self::Cifar10 { root } => ("cifar10", Some(root.clone())),
            Self::Cifar100 { root } => ("cifar100", Some(root.clone())),
            Self::ImageFolder { train, .. } => ("image-folder", train.parent().map(PathBuf::from)),
        }
    }

    /// The file or folder the data comes from, for error messages.
    pub fn origin(&self) -> PathBuf {
        match self {
            Self::FashionMnist { root: Some(root) }
            | Self::Mnist { root }
            | Self::Cifar10 { root }
            | Self::Cifar100 { root } => root.clone(),
            Self::FashionMnist { root: None } | Self::FashionMnistSubset => {
                PathBuf::from("<fashion-mnist>")
            }
            Self::ImageFolder { train, .. } => train.clone(),
        }
    }
}

/// A data set split three ways.
#[derive(Clone, Debug)]
pub struct Splits {
    /// Images to train on.
    pub train: ImageSet,
    /// Held out from the training images, for model selection and collapse scores.
    pub validation: ImageSet,
    /// The data set's own test images.
    pub test: ImageSet,
    /// Which copy of the data was read, for logs and run records.
    pub description: String,
}

/// Reads `source` and holds out `validation_fraction` of each training class (seeded).
pub fn load_splits(
    source: &DataSource,
    validation_fraction: f64,
    seed: u64,
) -> Result<Splits, DataError> {
    let (train, test, description) = match source {
        DataSource::FashionMnist { root: Some(root) } => {
            let (train, test) = read_idx_pair(root, &FASHION_MNIST_CLASSES.map(String::from))?;
            (train, test, format!("fashion-mnist ({})", root.display()))
        }
        DataSource::FashionMnist { root: None } if Path::new(DEBIAN_FASHION_MNIST).is_dir() => {
            let root = Path::new(DEBIAN_FASHION_MNIST);
            let (train, test) = read_idx_pair(root, &FASHION_MNIST_CLASSES.map(String::from))?;
            (
                train,
                test,
                format!("fashion-mnist (Debian copy, {DEBIAN_FASHION_MNIST})"),
            )
        }
        DataSource::FashionMnist { root: None } | DataSource::FashionMnistSubset => {
            let decode = |name: &str| {
                let (_, bytes) = EMBEDDED.iter().find(|(n, _)| *n == name).expect("embedded");
                decode_idx(bytes, &Path::new("<embedded>").join(name))
            };
            let classes = FASHION_MNIST_CLASSES.map(String::from);
            let origin = Path::new("<embedded fashion-mnist subset>");
            let train = images_from_idx(
                decode("train-images-idx3-ubyte.gz")?,
                decode("train-labels-idx1-ubyte.gz")?,
                &classes,
                origin,
            )?;
            let test = images_from_idx(
                decode("t10k-images-idx3-ubyte.gz")?,
                decode("t10k-labels-idx1-ubyte.gz")?,
                &classes,
                origin,
            )?;
            let description = format!(
                "fashion-mnist (embedded subset: {} train, {} test images)",
                train.len(),
                test.len()
            );
            (train, test, description)
        }
        DataSource::Mnist { root } => {
            let classes: Vec<String> = (0..10).map(|d| d.to_string()).collect();
            let (train, test) = read_idx_pair(root, &classes)?;
            (train, test, format!("mnist ({})", root.display()))
        }
        DataSource::Cifar10 { root } => {
            let train_files: Vec<PathBuf> = (1..=5)
                .map(|i| root.join(format!("data_batch_{i}.bin")))
                .collect();
            let train_refs: Vec<&Path> = train_files.iter().map(PathBuf::as_path).collect();
            let train = read_cifar(&train_refs, CifarVariant::Cifar10)?;
            let test = read_cifar(&[&root.join("test_batch.bin")], CifarVariant::Cifar10)?;
            (train, test, format!("cifar10 ({})", root.display()))
        }
        DataSource::Cifar100 { root } => {
            let train = read_cifar(&[&root.join("train.bin")], CifarVariant::Cifar100)?;
            let test = read_cifar(&[&root.join("test.bin")], CifarVariant::Cifar100)?;
            (train, test, format!("cifar100 ({})", root.display()))
        }
        DataSource::ImageFolder { train, test } => {
            let train_set = read_image_folder(train)?;
            let test_set = read_image_folder(test)?;
            if test_set.class_names != train_set.class_names || test_set.shape != train_set.shape {
                return Err(DataError::malformed(
                    test,
                    "classes or image size differ from the training folder",
                ));
            }
            (
                train_set,
                test_set,
                format!("image folder ({})", train.display()),
            )
        }
    };
    let [_, h, w] = train.shape;
    if h != w {
        return Err(DataError::malformed(
            source.origin(),
            format!(
                "images are {h}x{w} (height x width); lacoot's models take square images, so resize or crop them to one side first"
            ),
        ));
    }
    let (train, validation) = hold_out(&train, validation_fraction, seed);
    Ok(Splits {
        train,
        validation,
        test,
        description,
    })
}

/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-…` from `root`, raw or `.gz`.
fn read_idx_pair(root: &Path, classes: &[String]) -> Result<(ImageSet, ImageSet), DataError> {
    let find = |stem: &str| {
        let plain = root.join(stem);
        let gz = root.join(format!("{stem}.gz"));
        if plain.is_file() { plain } else { gz }
    };
    let read = |split: &str| -> Result<ImageSet, DataError> {
        let images_path = find(&format!("{split}-images-idx3-ubyte"));
        let labels_path = find(&format!("{split}-labels-idx1-ubyte"));
        images_from_idx(
            read_idx(&images_path)?,
            read_idx(&labels_path)?,
            classes,
            &images_path,
        )
    };
    Ok((read("train")?, read("t10k")?))
}

fn images_from_idx(
    images: IdxArray,
    labels: IdxArray,
    classes: &[String],
    origin: &Path,
) -> Result<ImageSet, DataError> {
    let [count, h, w] = images.dims[..] else {
        return Err(DataError::malformed(
            origin,
            format!("images must be [N, H, W], found {:?}", images.dims),
        ));
    };
    if labels.dims != [count] {
        return Err(DataError::malformed(
            origin,
            format!("{count} images but labels of shape {:?}", labels.dims),
        ));
    }
    ImageSet::new(
        images.values,
        labels.values.into_iter().map(u32::from).collect(),
        [1, h, w],
        classes.to_vec(),
        origin,
    )
}

/// Splits off `fraction` of each class (rounded), chosen by a seeded shuffle.
fn hold_out(set: &ImageSet, fraction: f64, seed: u64) -> (ImageSet, ImageSet) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for class in 0..set.num_classes() as u32 {
        let mut members: Vec<usize> = (0..set.len()).filter(|&i| set.labels[i] == class).collect();
        members.shuffle(&mut rng);
        let held = ((members.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
        validation.extend_from_slice(&members[..held]);
        train.extend_from_slice(&members[held..]);
    }
    train.sort_unstable();
    validation.sort_unstable();
    (set.subset(&train), set.subset(&validation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_subset_loads_with_a_stratified_validation_split() {
        let splits = load_splits(&DataSource::FashionMnistSubset, 0.1, 0).unwrap();
        assert!(splits.description.contains("embedded"));
        assert_eq!(splits.train.len(), 4500);
        assert_eq!(splits.validation.len(), 500);
        assert_eq!(splits.test.len(), 1000);
        assert_eq!(splits.train.shape, [1, 28, 28]);
        for class in 0..10 {
            let held = splits
                .validation
                .labels
                .iter()
                .filter(|&&l| l == class)
                .count();
            assert_eq!(held * 10, splits.validation.len(), "class {class}");
        }
    }

    #[test]
    fn the_split_depends_on_the_seed_only() {
        let set = ImageSet::new(
            (0..40u8).collect(),
            (0..40).map(|i| i % 4).collect(),
            [1, 1, 1],
            (0..4).map(|c| c.to_string()).collect(),
            Path::new("test"),
        )
        .unwrap();
        let (a, b) = (hold_out(&set, 0.25, 3), hold_out(&set, 0.25, 3));
        assert_eq!(a.1.pixels, b.1.pixels);
        assert_eq!(a.1.len(), 12);
        assert_ne!(hold_out(&set, 0.25, 4).1.pixels, a.1.pixels);
    }
}
