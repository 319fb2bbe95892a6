//! Health data at rest: every folder the product creates on local disk is 0700 and every
//! file 0600, whatever the umask, so no other local user can read a log, a database, an
//! object or a secret. The mode is given when the file or folder is made (never a `chmod`
//! afterwards, which would leave a moment in which the file is readable); files other code
//! creates (SQLite's) are tightened right after, in a folder that is already private.
//!
//! Folders and files the product owns that exist with looser modes (made by an earlier
//! version) are tightened when they are opened: [`tighten`].

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every folder the product creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the product creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents, each 0700. Existing folders are left as they are
/// (see [`tighten`]).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// `OpenOptions` whose `create` makes a 0600 file.
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Replaces `path` with `contents` so that a crash leaves either the old or the new file:
/// a 0600 temporary file beside it (`<name>.tmp`), fsynced, renamed over it, then the folder
/// fsynced.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    // a temporary file left by an earlier version may be looser
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Takes the group and other bits off an existing file or folder the product owns. Returns
/// the old mode when it changed (for a warning), `None` when it was already private or does
/// not exist.
pub fn tighten(path: &Path) -> io::Result<Option<u32>> {
    let mode = match std::fs::metadata(path) {
        Ok(meta) => meta.permissions().mode(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7700))?;
    Ok(Some(mode & 0o7777))
}

/// [`tighten`], with a warning naming the path when it changed something and when it could
/// not (the product still runs: the files it makes are private either way).
pub fn tighten_and_warn(path: &Path) {
    match tighten(path) {
        Ok(Some(old)) => tracing::warn!(
            path = %path.display(),
            old_mode = format!("{old:o}"),
            "tightened the permissions of a data folder or file readable by other local users"
        ),
        Ok(None) => {}
        Err(err) => tracing::warn!(
            path = %path.display(),
            error = %err,
            "a data folder or file is readable by other local users and could not be tightened"
        ),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// Sets the process's umask to the usual 022, so a test shows that the modes come from
    /// the code and not from a strict umask (nextest runs each test in its own process).
    pub(crate) fn umask_022() {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    }

    pub(crate) fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{mode, umask_022};
    use super::*;

    #[test]
    fn created_folders_and_files_are_private_under_umask_022() {
        umask_022();
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/c");
        create_dir_all(&nested).unwrap();
        for folder in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&dir.path().join(folder)), 0o700, "{folder}");
        }
        let file = nested.join("f");
        options().write(true).create(true).open(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        let replaced = nested.join("meta.json");
        write_atomically(&replaced, b"{}").unwrap();
        assert_eq!(mode(&replaced), 0o600);
        assert!(!nested.join("meta.tmp").exists());
    }

    #[test]
    fn loose_existing_paths_are_tightened_once() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("old");
        std::fs::create_dir(&folder).unwrap();
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(tighten(&folder).unwrap(), Some(0o755));
        assert_eq!(mode(&folder), 0o700);
        assert_eq!(tighten(&folder).unwrap(), None);
        assert_eq!(tighten(&dir.path().join("missing")).unwrap(), None);
    }
}
