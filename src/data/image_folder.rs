//! Image folders: one sub-folder per class holding PNG or JPEG files (Tiny-ImageNet, PACS, …).

use std::path::{Path, PathBuf};

use super::{DataError, ImageSet};

/// Reads `root/<class>/<image>` for every class folder (sorted by name, which gives the labels).
/// Images are converted to RGB and must all have the size of the first one.
pub fn read_image_folder(root: &Path) -> Result<ImageSet, DataError> {
    let classes = sorted_entries(root, |p| p.is_dir())?;
    if classes.is_empty() {
        return Err(DataError::malformed(root, "no class folders"));
    }
    let (mut pixels, mut labels, mut size) = (Vec::new(), Vec::new(), None);
    for (label, class) in classes.iter().enumerate() {
        let files = sorted_entries(class, |p| p.is_file())?;
        if files.is_empty() {
            return Err(DataError::malformed(class, "class folder holds no images"));
        }
        for file in files {
            let image = image::open(&file)
                .map_err(|e| DataError::malformed(&file, format!("unreadable image: {e}")))?
                .to_rgb8();
            let dims = image.dimensions();
            match size {
                None => size = Some(dims),
                Some(first) if first != dims => {
                    return Err(DataError::malformed(
                        &file,
                        format!(
                            "image is {}x{}, the others are {}x{}",
                            dims.0, dims.1, first.0, first.1
                        ),
                    ));
                }
                Some(_) => {}
            }
            let (w, h) = (dims.0 as usize, dims.1 as usize);
            let raw = image.into_raw();
            for c in 0..3 {
                pixels.extend((0..h * w).map(|p| raw[p * 3 + c]));
            }
            labels.push(label as u32);
        }
    }
    let (w, h) = size.expect("at least one image");
    let class_names = classes
        .iter()
        .map(|c| {
            c.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    ImageSet::new(
        pixels,
        labels,
        [3, h as usize, w as usize],
        class_names,
        root,
    )
}

fn sorted_entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden && keep(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}
