//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};
use lacoot::arrays::HostArray;

/// `tests/fixtures`, reference data committed with the project (made by `tools/make_*_fixtures.py`).
pub fn local_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The flags of the tests' smallest training on the toy MNIST data in `data` (see
/// [`write_toy_data`]): width 4, one epoch, batches of 10, 4 directions, a quarter held out.
pub fn tiny_training(data: &Path) -> Vec<std::ffi::OsString> {
    let mut flags: Vec<std::ffi::OsString> =
        vec!["--data".into(), "mnist".into(), "--data-dir".into()];
    flags.push(data.into());
    flags.extend(
        [
            "--width",
            "4",
            "--epochs",
            "1",
            "--batch-size",
            "10",
            "--num-projections",
            "4",
            "--validation-fraction",
            "0.25",
        ]
        .map(Into::into),
    );
    flags
}

/// The `lacoot` binary built for these tests.
pub fn lacoot() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("lacoot").unwrap()
}

/// The standard output of a command that must have succeeded (its standard error otherwise).
pub fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Reads a 4-D `.npy` file (e.g. a batch of images) as a tensor on the plain device.
pub fn read_array4(path: &Path) -> Tensor<4> {
    let array = HostArray::read(path, None).unwrap();
    let shape: [usize; 4] = array.shape.clone().try_into().unwrap();
    array
        .into_point_cloud(&lacoot::device::default_device())
        .unwrap()
        .reshape(shape)
}

/// Asserts that logits agree with a reference `.npy` matrix within `1e-4` everywhere.
pub fn assert_logits_match(logits: Tensor<2>, expected: &Path) {
    let got = values(logits);
    let want = values(read_matrix(expected, &lacoot::device::default_device()));
    assert_eq!(got.len(), want.len(), "{}", expected.display());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "{}: max |Δ| = {worst}", expected.display());
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Reads a 2-D `.npy` file as a matrix on `device`, in the file's precision.
pub fn read_matrix(path: &Path, device: &Device) -> Tensor<2> {
    HostArray::read(path, None)
        .unwrap()
        .into_matrix(device)
        .unwrap()
}

/// A `[rows, columns]` f64 tensor from row-major values.
pub fn matrix(values: Vec<f64>, rows: usize, columns: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(values, [rows, columns]),
        (device, DType::F64),
    )
}

/// The tensor's values as f64.
pub fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f64> {
    tensor.inner().try_into_vec_as::<f64>().unwrap()
}

/// The single value of a one-element tensor.
pub fn scalar(tensor: Tensor<1>) -> f64 {
    values(tensor)[0]
}

/// Asserts `|actual − expected| <= tolerance · max(|expected|, floor)`.
pub fn assert_close(actual: f64, expected: f64, tolerance: f64, floor: f64, what: &str) {
    let allowed = tolerance * expected.abs().max(floor);
    assert!(
        (actual - expected).abs() <= allowed,
        "{what}: got {actual}, expected {expected} (allowed error {allowed})"
    );
}

/// Writes a `.npy` file of any element type NumPy knows.
pub fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
    use npyz::WriterBuilder;
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(file)
        .begin_nd()
        .unwrap();
    writer.extend(data.iter().copied()).unwrap();
    writer.finish().unwrap();
}

/// Writes a learnable 10-class IDX data set: each class is a bright square at its own position on
/// an 8x8 canvas, with deterministic noise.
pub fn write_toy_data(root: &Path, per_class: usize) {
    for split in ["train", "t10k"] {
        let count = per_class * 10;
        let mut pixels = Vec::with_capacity(count * 64);
        let mut labels = Vec::with_capacity(count);
        for i in 0..count {
            let class = i % 10;
            let (cy, cx) = (class / 4 * 2 + 1, class % 4 * 2);
            for y in 0..8 {
                for x in 0..8 {
                    let inside = (cy..cy + 2).contains(&y) && (cx..cx + 2).contains(&x);
                    let noise = ((i * 31 + y * 7 + x * 13) % 40) as u8;
                    pixels.push(if inside { 200 + noise } else { noise });
                }
            }
            labels.push(class as u8);
        }
        std::fs::write(
            root.join(format!("{split}-images-idx3-ubyte")),
            lacoot::data::idx::encode_idx(&[count, 8, 8], &pixels),
        )
        .unwrap();
        std::fs::write(
            root.join(format!("{split}-labels-idx1-ubyte")),
            lacoot::data::idx::encode_idx(&[count], &labels),
        )
        .unwrap();
    }
}

/// Runs `lacoot eval --json --model MODEL` on a collapsed model and asserts that it reproduces the
/// test accuracy its collapse `report` gives for the chosen step.
pub fn assert_eval_reproduces_chosen(model: &Path, report: &serde_json::Value) {
    let printed = ok(lacoot()
        .args(["eval", "--json", "--model"])
        .arg(model)
        .output()
        .unwrap());
    let eval: serde_json::Value = serde_json::from_str(&printed).unwrap();
    let chosen = report["chosen"].as_u64().unwrap() as usize;
    assert_eq!(
        eval["accuracy"].as_f64().unwrap(),
        report["steps"][chosen]["test"]["accuracy"]
            .as_f64()
            .unwrap(),
        "{}",
        model.display()
    );
}
