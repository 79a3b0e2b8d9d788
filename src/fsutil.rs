//! Writing files so that a crash never leaves a half-written one behind: every file is written to
//! a temporary beside it, flushed to disk (file and folder), then renamed into place.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A temporary path beside `path` (same folder, so a rename is atomic).
pub fn temporary_beside(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Flushes the folder holding `path` to disk, so that a rename or a new file in it survives a
/// power loss.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Flushes the folder itself (its entries) to disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: to a temporary file in the same folder, flushed to disk,
/// then renamed over `path`, and the folder flushed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |temporary| {
        let mut file = std::fs::File::create(temporary)?;
        file.write_all(bytes)?;
        file.sync_all()
    })
}

/// Runs `write` on a temporary path beside `path`, flushes what it wrote to disk, then renames the
/// result over `path` and flushes the folder.
pub fn write_atomic_with<E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let temporary = temporary_beside(path);
    let result = write(&temporary).and_then(|()| {
        std::fs::File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, path)?;
        Ok(sync_parent(path)?)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// A fresh, empty staging folder beside `target` (`target.tmp`), for [`swap_in_dir`].
pub fn staging_dir(target: &Path) -> std::io::Result<PathBuf> {
    let staging = sibling(target, "tmp");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    Ok(staging)
}

/// Flushes every file below `dir`, and every folder, to disk.
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Replaces the folder `target` by the complete folder `staging`: everything in `staging` is
/// flushed to disk, the old folder is moved aside (`target.old`), the new one renamed into place,
/// then the old one deleted. A crash at any point leaves either the new folder in place or the old
/// one aside, which [`recover_dir`] puts back.
pub fn swap_in_dir(staging: &Path, target: &Path) -> std::io::Result<()> {
    recover_dir(target)?;
    sync_tree(staging)?;
    let retired = sibling(target, "old");
    if target.exists() {
        std::fs::rename(target, &retired)?;
    }
    std::fs::rename(staging, target)?;
    sync_parent(target)?;
    if retired.exists() {
        std::fs::remove_dir_all(&retired)?;
    }
    Ok(())
}

/// Repairs what a crash during [`swap_in_dir`] left: when `target` is missing but its retired copy
/// `target.old` exists, the copy is put back; when both exist, the copy is deleted. Call it before
/// reading a folder that is replaced with [`swap_in_dir`].
pub fn recover_dir(target: &Path) -> std::io::Result<()> {
    let retired = sibling(target, "old");
    if !retired.exists() {
        return Ok(());
    }
    if target.exists() {
        std::fs::remove_dir_all(&retired)
    } else {
        tracing::warn!(
            "{}: restored from {} (an earlier write was interrupted)",
            target.display(),
            retired.display()
        );
        std::fs::rename(&retired, target)?;
        sync_parent(target)
    }
}

/// The file in a saved folder that lists a CRC-32 of every other file in it.
pub const CHECKSUMS_FILE: &str = "checksums.json";

/// Writes `dir/checksums.json`: the CRC-32 of each of `files` (names inside `dir`).
pub fn write_checksums(dir: &Path, files: &[&str]) -> std::io::Result<()> {
    let mut sums = std::collections::BTreeMap::new();
    for name in files {
        sums.insert(name.to_string(), crc32_of(&dir.join(name))?);
    }
    let json = serde_json::to_vec_pretty(&sums).expect("checksums serialise");
    std::fs::write(dir.join(CHECKSUMS_FILE), json)
}

/// Checks every file listed in `dir/checksums.json` against its CRC-32; the problem, naming the
/// file, if one is missing, altered or the list itself is unreadable. A folder without a list
/// (written before lacoot kept checksums) is accepted with a warning.
pub fn verify_checksums(dir: &Path) -> Result<(), String> {
    let list = dir.join(CHECKSUMS_FILE);
    if !list.exists() {
        tracing::warn!(
            "{}: no {CHECKSUMS_FILE} (written by an older lacoot): the files are not verified",
            dir.display()
        );
        return Ok(());
    }
    let text = std::fs::read(&list).map_err(|e| format!("{}: {e}", list.display()))?;
    let sums: std::collections::BTreeMap<String, u32> = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a checksum list ({e})", list.display()))?;
    for (name, expected) in sums {
        let path = dir.join(&name);
        if Path::new(&name).components().count() != 1 {
            return Err(format!(
                "{}: lists a path outside the folder",
                list.display()
            ));
        }
        let actual = crc32_of(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if actual != expected {
            return Err(format!(
                "{}: checksum mismatch (the file is damaged or was changed after it was saved)",
                path.display()
            ));
        }
    }
    Ok(())
}

fn crc32_of(path: &Path) -> std::io::Result<u32> {
    let mut hasher = crc32fast::Hasher::new();
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = std::io::Read::read(&mut file, &mut buffer)?;
        if read == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buffer[..read]);
    }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    dir.with_file_name(format!("{name}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let failed: Result<(), std::io::Error> =
            write_atomic_with(&path, |_| Err(std::io::Error::other("disk full")));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
    }

    #[test]
    fn a_folder_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model");
        for content in ["first", "second"] {
            let staging = staging_dir(&target).unwrap();
            std::fs::write(staging.join("weights"), content).unwrap();
            swap_in_dir(&staging, &target).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(target.join("weights")).unwrap(),
            "second"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn checksums_catch_a_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("weights"), [1u8, 2, 3]).unwrap();
        write_checksums(dir.path(), &["weights"]).unwrap();
        verify_checksums(dir.path()).unwrap();
        std::fs::write(dir.path().join("weights"), [1u8, 2, 4]).unwrap();
        let problem = verify_checksums(dir.path()).unwrap_err();
        assert!(problem.contains("weights: checksum mismatch"), "{problem}");
    }

    #[test]
    fn a_crash_between_the_two_renames_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("last");
        let staging = staging_dir(&target).unwrap();
        std::fs::write(staging.join("weights"), "old").unwrap();
        swap_in_dir(&staging, &target).unwrap();
        // The crash: the old folder was moved aside, the new one never renamed in.
        std::fs::rename(&target, sibling(&target, "old")).unwrap();
        recover_dir(&target).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("weights")).unwrap(),
            "old"
        );
        // A swap after such a crash keeps the old copy until the new one is in place.
        std::fs::rename(&target, sibling(&target, "old")).unwrap();
        let staging = staging_dir(&target).unwrap();
        std::fs::write(staging.join("weights"), "new").unwrap();
        swap_in_dir(&staging, &target).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("weights")).unwrap(),
            "new"
        );
        // A crash after the second rename leaves a stale copy, which recovery deletes.
        std::fs::create_dir(sibling(&target, "old")).unwrap();
        recover_dir(&target).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
