//! Writing files so that a crash never leaves a half-written one behind.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A temporary path beside `path` (same folder, so a rename is atomic).
pub fn temporary_beside(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: to a temporary file in the same folder, flushed to disk,
/// then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = temporary_beside(path);
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Runs `write` on a temporary path beside `path`, then renames the result over `path`.
pub fn write_atomic_with<E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let temporary = temporary_beside(path);
    let result = write(&temporary).and_then(|()| Ok(std::fs::rename(&temporary, path)?));
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

/// Replaces the folder `target` by the complete folder `staging`: the old one is moved aside,
/// the new one renamed into place, then the old one deleted, so `target` is always either the old
/// or the new folder, never a half-written one.
pub fn swap_in_dir(staging: &Path, target: &Path) -> std::io::Result<()> {
    let retired = sibling(target, "old");
    if retired.exists() {
        std::fs::remove_dir_all(&retired)?;
    }
    if target.exists() {
        std::fs::rename(target, &retired)?;
    }
    std::fs::rename(staging, target)?;
    if retired.exists() {
        std::fs::remove_dir_all(&retired)?;
    }
    Ok(())
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
}
