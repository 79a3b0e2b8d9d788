//! torchvision-named weights of a (collapsed) network, the list of removed blocks, and the few
//! lines of PyTorch that rebuild the torchvision model, replace the removed blocks by
//! `nn.Identity()` and load the weights.

use std::collections::BTreeMap;
use std::path::Path;

use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::{ExportError, ExportSource, reference_batch};
use crate::fsutil::{staging_dir, swap_in_dir, write_checksums};
use crate::models::swin::relative_position_index;
use crate::models::{Architecture, BlockNetwork, ModelSpec, StemKind};

/// The weights, with torchvision's `state_dict` names.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The removed blocks and what the input expects, as JSON.
pub const REMOVED_FILE: &str = "removed_blocks.json";
/// The PyTorch lines that build the model and load the weights.
pub const LOADER_FILE: &str = "load_model.py";
/// A batch of inputs and lacoot's logits for them, to check a reloaded model against.
pub const REFERENCE_FILE: &str = "reference.safetensors";
/// What the folder holds and how to use it.
pub const README_FILE: &str = "README.md";

/// Writes the folder `dir` (atomically): [`WEIGHTS_FILE`], [`REMOVED_FILE`], [`LOADER_FILE`],
/// [`REFERENCE_FILE`] and [`README_FILE`].
pub fn write_torchvision(source: &ExportSource, dir: &Path) -> Result<(), ExportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    let staging = staging_dir(dir).map_err(io(dir))?;
    let weights = state_dict(source)?;
    std::fs::write(staging.join(WEIGHTS_FILE), weights).map_err(io(&staging))?;
    let removed: Vec<String> = source.network.removed_blocks().into_iter().collect();
    let description = serde_json::json!({
        "architecture": source.spec.architecture,
        "removed_blocks": removed,
        "normalization": source.normalization,
        "input": "NCHW float32 pixels scaled to [0, 1], then (x - mean) / std per channel",
        "origin": source.origin,
        "accuracy": source.accuracies.iter().cloned().collect::<BTreeMap<String, f64>>(),
        "model": source.spec,
    });
    let json = serde_json::to_vec_pretty(&description).expect("JSON values serialise");
    std::fs::write(staging.join(REMOVED_FILE), json).map_err(io(&staging))?;
    let loader = pytorch_loader(&source.spec, &removed);
    std::fs::write(staging.join(LOADER_FILE), &loader).map_err(io(&staging))?;
    std::fs::write(staging.join(REFERENCE_FILE), reference_batch(source)?).map_err(io(&staging))?;
    std::fs::write(staging.join(README_FILE), readme(source, &loader)).map_err(io(&staging))?;
    write_checksums(
        &staging,
        &[
            WEIGHTS_FILE,
            REMOVED_FILE,
            LOADER_FILE,
            REFERENCE_FILE,
            README_FILE,
        ],
    )
    .map_err(io(&staging))?;
    swap_in_dir(&staging, dir).map_err(io(dir))
}

/// The network's `state_dict` as torchvision names it, as safetensors bytes: the kept blocks'
/// weights, plus the buffers torchvision keeps and lacoot derives (batch norms'
/// `num_batches_tracked`, Swin's `relative_position_index`).
pub fn state_dict(source: &ExportSource) -> Result<Vec<u8>, ExportError> {
    let failure = |e: String| ExportError::Graph(format!("cannot collect the weights: {e}"));
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true);
    source
        .network
        .save_into(&mut store)
        .map_err(|e| failure(e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| failure(e.to_string()))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| failure(e.to_string()))?;
    let removed: Vec<String> = source
        .network
        .removed_blocks()
        .into_iter()
        .map(|b| format!("{b}."))
        .collect();
    let mut kept: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, view) in tensors.tensors() {
        if removed.iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        if let Some(prefix) = name.strip_suffix(".running_mean") {
            kept.insert(
                format!("{prefix}.num_batches_tracked"),
                (Dtype::I64, Vec::new(), 0i64.to_le_bytes().to_vec()),
            );
        }
        if let Some(prefix) = name.strip_suffix(".relative_position_bias_table") {
            let rows = view.shape()[0];
            let window = ((rows as f64).sqrt() as usize).div_ceil(2);
            let index = relative_position_index(window);
            kept.insert(
                format!("{prefix}.relative_position_index"),
                (
                    Dtype::I64,
                    vec![index.len()],
                    bytemuck::cast_slice(&index).to_vec(),
                ),
            );
        }
        kept.insert(
            name,
            (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
        );
    }
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .map(|(name, (dtype, shape, data))| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| failure(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::serialize(views, metadata).map_err(|e| failure(e.to_string()))
}

/// The Python lines (at most ten of code) that build the torchvision model `spec` describes,
/// replace `removed` by `nn.Identity()` and load [`WEIGHTS_FILE`] from the script's folder.
pub fn pytorch_loader(spec: &ModelSpec, removed: &[String]) -> String {
    let classes = spec.num_classes;
    let channels = spec.in_channels;
    let width = spec.width;
    let (import, build) = match spec.architecture {
        Architecture::Resnet18 | Architecture::Resnet34 => {
            let stages = if spec.architecture == Architecture::Resnet18 {
                "[2, 2, 2, 2]"
            } else {
                "[3, 4, 6, 3]"
            };
            let stem = match spec.stem.unwrap_or(StemKind::Cifar) {
                StemKind::Cifar => "3, 1, 1",
                StemKind::Imagenet => "7, 2, 3",
            };
            (
                "from torchvision.models.resnet import ResNet, BasicBlock",
                format!(
                    "model = ResNet(BasicBlock, {stages}, num_classes={classes})\n\
                     w = {width}; model.inplanes = w; model.conv1 = nn.Conv2d({channels}, w, {stem}, bias=False); model.bn1 = nn.BatchNorm2d(w)\n\
                     for i, n in enumerate({stages}): setattr(model, f\"layer{{i + 1}}\", model._make_layer(BasicBlock, w << i, n, stride=min(i, 1) + 1))\n\
                     model.fc = nn.Linear(8 * w, {classes})\n"
                ),
            )
        }
        Architecture::Mobilenetv2 | Architecture::Mobilenetv2Cifar => {
            let cifar = spec.architecture == Architecture::Mobilenetv2Cifar;
            let setting = if cifar {
                ", inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]"
            } else {
                ""
            };
            let stem = if cifar { 1 } else { 2 };
            (
                "from torchvision.models import MobileNetV2",
                format!(
                    "model = MobileNetV2(num_classes={classes}, width_mult={}{setting})\n\
                     stem = model.features[0][0]; model.features[0][0] = nn.Conv2d({channels}, stem.out_channels, 3, {stem}, 1, bias=False)\n",
                    width as f64 / 32.0
                ),
            )
        }
        Architecture::SwinT => (
            "from torchvision.models.swin_transformer import SwinTransformer",
            format!(
                "model = SwinTransformer([4, 4], {width}, [2, 2, 6, 2], [3, 6, 12, 24], [7, 7], num_classes={classes})\n\
                 model.features[0][0] = nn.Conv2d({channels}, {width}, 4, 4)\n"
            ),
        ),
    };
    let removed_list = serde_json::to_string(removed).expect("names serialise");
    format!(
        "import pathlib, torch.nn as nn\n\
         from safetensors.torch import load_file\n\
         {import}\n\
         {build}\
         for name in {removed_list}: parent, index = name.rsplit(\".\", 1); model.get_submodule(parent)[int(index)] = nn.Identity()\n\
         model.load_state_dict(load_file(pathlib.Path(__file__).with_name(\"{WEIGHTS_FILE}\"))); model.eval()\n"
    )
}

fn readme(source: &ExportSource, loader: &str) -> String {
    let removed: Vec<String> = source.network.removed_blocks().into_iter().collect();
    let removed = if removed.is_empty() {
        "none".to_string()
    } else {
        removed.join(", ")
    };
    let accuracies: Vec<String> = source
        .accuracies
        .iter()
        .map(|(split, accuracy)| format!("{:.2} % on {split}", 100.0 * accuracy))
        .collect();
    format!(
        "# {architecture:?} exported by lacoot\n\n\
         From {origin}. Removed blocks (replaced by `nn.Identity()`): {removed}.{measured}\n\n\
         Input: NCHW float32 pixels scaled to [0, 1], then `(x - mean) / std` per channel with \
         mean {mean:?} and std {std:?}.\n\n\
         `{LOADER_FILE}` builds the torchvision model and loads `{WEIGHTS_FILE}` (torchvision's \
         `state_dict` names):\n\n```python\n{loader}```\n\n\
         `{REFERENCE_FILE}` holds a batch of inputs (`input`) and lacoot's logits for it \
         (`logits`); `tools/check_torchvision_export.py` in the lacoot repository compares them \
         with PyTorch's.\n",
        architecture = source.spec.architecture,
        origin = source.origin,
        measured = if accuracies.is_empty() {
            String::new()
        } else {
            format!(" Accuracy measured by lacoot: {}.", accuracies.join(", "))
        },
        mean = source.normalization.mean,
        std = source.normalization.std,
    )
}
