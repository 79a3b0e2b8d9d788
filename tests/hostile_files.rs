//! Every reader of user files survives damaged files: random truncations and byte flips of a valid
//! file give an error that names the file (or a successful read of whatever the bytes still
//! mean), never a panic, an abort or an allocation of absurd size. 1,000 cases per reader.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::write_toy_data;
use lacoot::arrays::HostArray;
use lacoot::data::cifar::{CifarVariant, read_cifar};
use lacoot::data::idx::{encode_idx, read_idx};
use lacoot::data::{DataSource, load_splits};
use lacoot::train::{RunPaths, RunStart, Silent, TrainConfig, load_run_model, train};
use proptest::prelude::*;

const CASES: u32 = 1000;

/// A damage: cut the file at `cut` (a fraction of its length; 1 keeps it whole), then xor `flips`
/// bytes (position as a fraction of the remaining length, and the xor mask).
#[derive(Clone, Debug)]
struct Damage {
    cut: f64,
    flips: Vec<(f64, u8)>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        prop_oneof![Just(1.0), 0.0..1.0f64],
        proptest::collection::vec((0.0..1.0f64, 1..=255u8), 0..6),
    )
        .prop_map(|(cut, flips)| Damage { cut, flips })
        .prop_filter("some damage", |d| d.cut < 1.0 || !d.flips.is_empty())
}

fn damaged(original: &[u8], damage: &Damage) -> Vec<u8> {
    let keep = ((original.len() as f64) * damage.cut) as usize;
    let mut bytes = original[..keep.min(original.len())].to_vec();
    for &(position, mask) in &damage.flips {
        if !bytes.is_empty() {
            let last = bytes.len() - 1;
            let index = ((bytes.len() as f64) * position) as usize;
            bytes[index.min(last)] ^= mask;
        }
    }
    bytes
}

/// Asserts that a failed read names `file` (its name suffices).
fn names_file<T, E: std::fmt::Display>(result: Result<T, E>, file: &Path) {
    if let Err(error) = result {
        let message = error.to_string();
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(message.contains(name.as_ref()), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn idx_images() -> Vec<u8> {
    let pixels: Vec<u8> = (0..10 * 16).map(|v| (v * 7) as u8).collect();
    encode_idx(&[10, 4, 4], &pixels)
}

/// A run trained for one epoch on toy data, and a collapse-saved model of it (built once).
fn trained(root: &Path) -> (RunPaths, PathBuf) {
    write_toy_data(root, 2);
    let run = RunPaths::new(root.join("run"));
    let config = TrainConfig {
        width: Some(2),
        data: DataSource::Mnist {
            root: root.to_path_buf(),
        },
        validation_fraction: 0.5,
        epochs: 1,
        batch_size: 5,
        num_projections: 2,
        augmentation: None,
        ..TrainConfig::default()
    };
    train(&config, &run, RunStart::New, &Silent).unwrap();
    let (record, model) = load_run_model(&run, &run.best()).unwrap();
    let manifest = lacoot::collapse::saved::Manifest {
        model: record.model.clone(),
        normalization: record.normalization.clone(),
        data: record.config.data.clone(),
        validation_fraction: 0.5,
        seed: 0,
        source_run: run.root.clone(),
        data_description: record.data_description.clone(),
        selection_split: "validation".into(),
        selection_accuracy: 0.0,
        test_accuracy: 0.0,
    };
    let saved = root.join("saved");
    lacoot::collapse::saved::save_model(&saved, &model, &manifest).unwrap();
    (run, saved)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn idx_raw(d in damage()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte");
        std::fs::write(&path, damaged(&idx_images(), &d)).unwrap();
        names_file(read_idx(&path), &path);
    }

    #[test]
    fn idx_gzip(d in damage()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte.gz");
        std::fs::write(&path, damaged(&gzip(&idx_images()), &d)).unwrap();
        names_file(read_idx(&path), &path);
    }

    #[test]
    fn cifar_binary(d in damage()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data_batch_1.bin");
        let records: Vec<u8> = (0..3 * 3073).map(|i| if i % 3073 == 0 { (i / 3073) as u8 } else { (i % 251) as u8 }).collect();
        std::fs::write(&path, damaged(&records, &d)).unwrap();
        names_file(read_cifar(&[&path], CifarVariant::Cifar10), &path);
    }

    #[test]
    fn npy(d in damage()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.npy");
        common::write_npy(&path, &[3, 4], &[1.5f32; 12]);
        let original = std::fs::read(&path).unwrap();
        std::fs::write(&path, damaged(&original, &d)).unwrap();
        names_file(HostArray::read(&path, None), &path);
    }

    #[test]
    fn safetensors_array(d in damage()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.safetensors");
        let data: Vec<u8> = (0..12).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 4], &data).unwrap();
        safetensors::serialize_to_file([("x", view)], None, &path).unwrap();
        let original = std::fs::read(&path).unwrap();
        std::fs::write(&path, damaged(&original, &d)).unwrap();
        names_file(HostArray::read(&path, None), &path);
    }
}

/// Readers that need a run or a model: one trained run serves all their cases.
#[test]
fn run_files_survive_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, saved) = trained(tmp.path());
    let originals: Vec<(PathBuf, Vec<u8>)> = [
        run.config(),
        run.best().join("model.bpk"),
        run.best().join("state.json"),
        run.best().join("checksums.json"),
        saved.join("manifest.json"),
        saved.join("model.safetensors"),
    ]
    .into_iter()
    .map(|path| {
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    })
    .collect();
    // The checksum list of a folder that has one, written for its current files.
    let rewrite = |folder: &Path| {
        let files: &[&str] = if folder == saved {
            &["model.safetensors", "manifest.json"]
        } else if folder == run.best() {
            &["model.bpk", "state.json"]
        } else {
            return;
        };
        lacoot::fsutil::write_checksums(folder, files).unwrap();
    };
    let restore = || {
        for (path, bytes) in &originals {
            std::fs::write(path, bytes).unwrap();
        }
    };
    for (path, original) in &originals {
        // With the checksum list rewritten, the damage reaches the parsers behind the checksums.
        for rewrite_checksums in [false, true] {
            proptest::test_runner::TestRunner::new(config())
                .run(&damage(), |d| {
                    std::fs::write(path, damaged(original, &d)).unwrap();
                    let folder = path.parent().unwrap();
                    if rewrite_checksums && path.file_name().unwrap() != "checksums.json" {
                        rewrite(folder);
                    }
                    let result = if folder == saved {
                        lacoot::collapse::saved::load_model(&saved)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    } else {
                        load_run_model(&run, &run.best())
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    };
                    if let Err(message) = &result {
                        let name = path.file_name().unwrap().to_string_lossy();
                        let folder_name = folder.to_string_lossy();
                        prop_assert!(
                            message.contains(name.as_ref())
                                || message.contains(folder_name.as_ref()),
                            "{message}"
                        );
                    }
                    restore();
                    rewrite(folder);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

#[test]
fn image_folders_survive_damaged_images() {
    let tmp = tempfile::tempdir().unwrap();
    for split in ["train", "test"] {
        for (class, shade) in [("a", 10u8), ("b", 200u8)] {
            let folder = tmp.path().join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..2 {
                image::RgbImage::from_pixel(4, 4, image::Rgb([shade, i, 0]))
                    .save(folder.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
    let target = tmp.path().join("train/b/1.png");
    let original = std::fs::read(&target).unwrap();
    let source = DataSource::from_name("image-folder", Some(tmp.path().to_path_buf())).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&damage(), |d| {
            std::fs::write(&target, damaged(&original, &d)).unwrap();
            if let Err(error) = load_splits(&source, 0.0, 0) {
                let message = error.to_string();
                prop_assert!(message.contains("1.png"), "{message}");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn pytorch_weights_survive_damage() {
    use lacoot::models::{ResNetConfig, ResNetDepth, Stem};
    let tmp = tempfile::tempdir().unwrap();
    for name in ["weights.pth", "weights.safetensors"] {
        let original = std::fs::read(
            common::local_fixtures()
                .join("torch/resnet18_cifar")
                .join(name),
        )
        .unwrap();
        let path = tmp.path().join(name);
        proptest::test_runner::TestRunner::new(config())
            .run(&damage(), |d| {
                std::fs::write(&path, damaged(&original, &d)).unwrap();
                let mut net = ResNetConfig::new(ResNetDepth::ResNet18, Stem::Cifar)
                    .with_width(8)
                    .init(&lacoot::device::default_device())
                    .unwrap();
                let result = lacoot::models::weights::load_torch_weights(&mut net, &path, None);
                if let Err(error) = result {
                    let message = error.to_string();
                    prop_assert!(message.contains(name), "{message}");
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
