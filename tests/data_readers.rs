//! The data readers on small files the tests write, good and malformed.

use std::io::Write;
use std::path::Path;

use lacoot::data::idx::encode_idx;
use lacoot::data::{DataError, DataSource, load_splits};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Writes an MNIST-layout folder: `count` 3x3 training images and `count` test images, 10 classes.
fn write_idx_folder(root: &Path, count: usize, compress: bool) {
    for split in ["train", "t10k"] {
        let pixels: Vec<u8> = (0..count * 9).map(|v| v as u8).collect();
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        for (kind, dims, values) in [
            ("images-idx3-ubyte", vec![count, 3, 3], pixels),
            ("labels-idx1-ubyte", vec![count], labels),
        ] {
            let bytes = encode_idx(&dims, &values);
            let (name, bytes) = if compress {
                (format!("{split}-{kind}.gz"), gzip(&bytes))
            } else {
                (format!("{split}-{kind}"), bytes)
            };
            std::fs::write(root.join(name), bytes).unwrap();
        }
    }
}

fn problem(result: Result<lacoot::data::Splits, DataError>) -> String {
    match result {
        Err(error) => error.to_string(),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn idx_folders_load_raw_and_compressed() {
    for compress in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        write_idx_folder(tmp.path(), 40, compress);
        let source = DataSource::Mnist {
            root: tmp.path().to_path_buf(),
        };
        let splits = load_splits(&source, 0.25, 1).unwrap();
        assert_eq!(splits.train.shape, [1, 3, 3]);
        assert_eq!(
            (
                splits.train.len(),
                splits.validation.len(),
                splits.test.len()
            ),
            (30, 10, 40)
        );
        assert_eq!(splits.test.image(2), &[18, 19, 20, 21, 22, 23, 24, 25, 26]);
        let fashion = DataSource::FashionMnist {
            root: Some(tmp.path().to_path_buf()),
        };
        assert_eq!(
            load_splits(&fashion, 0.0, 1).unwrap().train.class_names[9],
            "Ankle boot"
        );
    }
}

#[test]
fn malformed_idx_files_are_named_with_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx_folder(tmp.path(), 10, false);
    let images = tmp.path().join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&images).unwrap();
    let source = DataSource::Mnist {
        root: tmp.path().to_path_buf(),
    };

    std::fs::write(&images, &bytes[..bytes.len() - 3]).unwrap();
    let message = problem(load_splits(&source, 0.1, 0));
    assert!(
        message.contains("train-images-idx3-ubyte") && message.contains("promises 90"),
        "{message}"
    );

    let mut wrong_magic = bytes.clone();
    wrong_magic[0] = 7;
    std::fs::write(&images, &wrong_magic).unwrap();
    assert!(problem(load_splits(&source, 0.1, 0)).contains("wrong magic"));

    std::fs::write(&images, [0x1f, 0x8b, 1, 2, 3]).unwrap();
    assert!(problem(load_splits(&source, 0.1, 0)).contains("corrupt gzip"));

    std::fs::write(&images, &bytes).unwrap();
    let labels = tmp.path().join("train-labels-idx1-ubyte");
    std::fs::write(&labels, encode_idx(&[10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 12])).unwrap();
    let message = problem(load_splits(&source, 0.1, 0));
    assert!(
        message.contains("label 12 of image 9 is out of range"),
        "{message}"
    );

    std::fs::write(&labels, encode_idx(&[9], &[0; 9])).unwrap();
    assert!(problem(load_splits(&source, 0.1, 0)).contains("10 images but labels of shape [9]"));

    let missing = DataSource::Mnist {
        root: tmp.path().join("nowhere"),
    };
    let message = problem(load_splits(&missing, 0.1, 0));
    assert!(
        message.contains("nowhere") && message.contains("cannot read"),
        "{message}"
    );
}

/// Writes CIFAR binary records: one label byte per record (two for CIFAR-100), then 3072 pixels.
fn cifar_records(count: usize, label_bytes: usize, label: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..count {
        out.extend(std::iter::repeat_n(label(i), label_bytes));
        out.extend((0..3072).map(|p| ((p + i) % 256) as u8));
    }
    out
}

#[test]
fn cifar_batches_load_and_bad_records_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 1..=5 {
        let name = format!("data_batch_{i}.bin");
        std::fs::write(
            tmp.path().join(name),
            cifar_records(4, 1, |j| (j % 10) as u8),
        )
        .unwrap();
    }
    std::fs::write(
        tmp.path().join("test_batch.bin"),
        cifar_records(6, 1, |j| j as u8),
    )
    .unwrap();
    let source = DataSource::Cifar10 {
        root: tmp.path().to_path_buf(),
    };
    let splits = load_splits(&source, 0.0, 0).unwrap();
    assert_eq!((splits.train.len(), splits.test.len()), (20, 6));
    assert_eq!(splits.train.shape, [3, 32, 32]);
    assert_eq!(splits.test.labels, [0, 1, 2, 3, 4, 5]);
    assert_eq!(splits.test.image(1)[..3], [1, 2, 3]);
    assert_eq!(splits.train.class_names[3], "cat");

    let test_file = tmp.path().join("test_batch.bin");
    std::fs::write(&test_file, vec![0u8; 3072]).unwrap();
    let message = problem(load_splits(&source, 0.0, 0));
    assert!(
        message.contains("test_batch.bin") && message.contains("3073-byte"),
        "{message}"
    );

    std::fs::write(&test_file, cifar_records(2, 1, |_| 11)).unwrap();
    let message = problem(load_splits(&source, 0.0, 0));
    assert!(message.contains("record 0 has label 11"), "{message}");

    let hundred = tempfile::tempdir().unwrap();
    std::fs::write(
        hundred.path().join("train.bin"),
        cifar_records(5, 2, |j| 90 + j as u8),
    )
    .unwrap();
    std::fs::write(hundred.path().join("test.bin"), cifar_records(2, 2, |_| 99)).unwrap();
    let splits = load_splits(
        &DataSource::Cifar100 {
            root: hundred.path().to_path_buf(),
        },
        0.0,
        0,
    )
    .unwrap();
    assert_eq!(splits.train.labels, [90, 91, 92, 93, 94]);
    assert_eq!(splits.train.num_classes(), 100);
}

fn write_png(path: &Path, width: u32, height: u32, shade: u8) {
    let image =
        image::RgbImage::from_fn(width, height, |x, y| image::Rgb([shade, x as u8, y as u8]));
    image.save(path).unwrap();
}

#[test]
fn image_folders_load_and_bad_folders_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    for split in ["train", "test"] {
        for (class, shade) in [("cats", 10u8), ("dogs", 200u8)] {
            let dir = tmp.path().join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..3 {
                write_png(&dir.join(format!("{i}.png")), 5, 5, shade);
            }
        }
    }
    // One JPEG among the PNGs.
    let jpeg = tmp.path().join("test/dogs/3.jpg");
    image::RgbImage::from_pixel(5, 5, image::Rgb([120, 120, 120]))
        .save(&jpeg)
        .unwrap();
    let source = DataSource::from_name("image-folder", Some(tmp.path().to_path_buf())).unwrap();
    let splits = load_splits(&source, 0.0, 0).unwrap();
    assert_eq!(splits.test.len(), 7);
    let decoded = splits.test.image(6);
    assert!(decoded.iter().all(|&v| v.abs_diff(120) <= 2), "{decoded:?}");
    assert_eq!(splits.train.shape, [3, 5, 5]);
    assert_eq!(splits.train.class_names, ["cats", "dogs"]);
    assert_eq!(splits.train.labels, [0, 0, 0, 1, 1, 1]);
    // Channel-major: the red plane (the shade) first, then x, then y.
    let first = splits.train.image(0);
    assert!(first[..25].iter().all(|&v| v == 10));
    assert_eq!(first[25..30], [0, 1, 2, 3, 4]);

    let odd = tmp.path().join("train/dogs/big.png");
    write_png(&odd, 6, 4, 0);
    let message = problem(load_splits(&source, 0.0, 0));
    assert!(
        message.contains("big.png") && message.contains("6x4"),
        "{message}"
    );
    std::fs::remove_file(&odd).unwrap();

    let broken = tmp.path().join("train/dogs/broken.png");
    std::fs::write(&broken, b"not a png").unwrap();
    let message = problem(load_splits(&source, 0.0, 0));
    assert!(
        message.contains("broken.png") && message.contains("unreadable image"),
        "{message}"
    );
    std::fs::remove_file(&broken).unwrap();

    // Non-square images are refused at load, with the reason.
    let tall = tempfile::tempdir().unwrap();
    for split in ["train", "test"] {
        for class in ["a", "b"] {
            let dir = tall.path().join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            write_png(&dir.join("0.png"), 4, 6, 1);
        }
    }
    let tall_source =
        DataSource::from_name("image-folder", Some(tall.path().to_path_buf())).unwrap();
    let message = problem(load_splits(&tall_source, 0.0, 0));
    assert!(
        message.contains("6x4") && message.contains("square"),
        "{message}"
    );

    std::fs::create_dir_all(tmp.path().join("train/empty")).unwrap();
    let message = problem(load_splits(&source, 0.0, 0));
    assert!(
        message.contains("empty") && message.contains("holds no images"),
        "{message}"
    );
}

#[test]
fn unknown_sources_and_missing_folders_are_explained() {
    assert!(
        DataSource::from_name("imagenet", None)
            .unwrap_err()
            .contains("unknown data set")
    );
    assert!(
        DataSource::from_name("cifar10", None)
            .unwrap_err()
            .contains("needs a folder")
    );
}
