//! Writing one object so that the newest copy wins against any other writer (issue 11 §4).
//! Reading the stored version and then writing is a race: two writers that both read
//! "older" both write, and the last to land wins, older or not. So the write itself is
//! conditional on what was read:
//!
//! - S3, GCS, Azure: the stored version is in the object's metadata; the put is
//!   `PutMode::Create` when nothing was there and `PutMode::Update` with the ETag (GCS: the
//!   generation) that was read otherwise. A writer that loses the race gets a precondition
//!   failure, reads again and either finds a newer copy (and stops) or retries over the
//!   newer tag. S3 servers must honour `If-None-Match` / `If-Match` (AWS since 2024, MinIO,
//!   R2, moto); one that cannot is configured with `AWS_CONDITIONAL_PUT=disabled` and then
//!   gets a plain check-then-put.
//! - A local folder: the whole batch is one transaction of the folder's index
//!   (`crate::local`), which writers of the folder take in turns.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use terra_eventlog::private_fs;
use terra_projector::SinkError;
use terra_projector::plan::Version;

use crate::errors::sink_error;
use crate::local::LocalWrite;
use crate::sink::object_path;
use crate::store::Store;

/// Lost races in a row before the write is given up as an outage (each one means another
/// writer stored a copy in between; versions only grow, so this ends quickly).
const MAX_CONFLICTS: usize = 16;

/// What this process knows of a stored object: its version, and the store's tag for it
/// when this process wrote it (so the next replacement needs no read first).
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub(crate) version: Version,
    tag: Option<UpdateVersion>,
}

impl Known {
    pub(crate) fn version(version: Version) -> Self {
        Self { version, tag: None }
    }
}

#[derive(Debug)]
pub(crate) enum Outcome {
    Written(Known),
    Superseded(Version),
}

/// Writes `bytes` at `key` with `version` unless a newer version is stored; `known` is what
/// this process last saw there.
pub(crate) async fn write_versioned(
    store: &Store,
    key: &str,
    bytes: Bytes,
    version: Version,
    known: Option<Known>,
) -> Result<Outcome, SinkError> {
    if let Some(known) = &known
        && known.version > version
    {
        // stored versions only grow, so the store holds at least this one
        return Ok(Outcome::Superseded(known.version));
    }
    debug_assert!(
        store.root.is_none(),
        "a local folder writes through its index"
    );
    write_remote(store, key, bytes, version, known).await
}

/// An object without a version (dead letters: one per log position, so any copy is right).
pub(crate) async fn put_plain(store: &Store, key: &str, bytes: Bytes) -> Result<(), SinkError> {
    if store.root.is_some() {
        let file = local_file(store, key)?;
        return blocking(move || write_private_object(&file, &bytes, false))
            .await
            .map_err(|e| SinkError::Outage(format!("object store: cannot write {key}: {e}")));
    }
    let options = put_options(store, PutMode::Overwrite, None);
    store
        .store
        .put_opts(&object_path(key)?, PutPayload::from_bytes(bytes), options)
        .await
        .map(drop)
        .map_err(|e| sink_error(&format!("PUT {key}"), e))
}

/// What a remote store holds at a key.
enum Stored {
    Absent,
    Present {
        version: Option<Version>,
        tag: UpdateVersion,
    },
}

async fn write_remote(
    store: &Store,
    key: &str,
    bytes: Bytes,
    version: Version,
    known: Option<Known>,
) -> Result<Outcome, SinkError> {
    let path = object_path(key)?;
    // a tag this process got from its own write saves the read; a stale one costs a retry
    let mut current = known.and_then(|k| {
        k.tag.map(|tag| Stored::Present {
            version: Some(k.version),
            tag,
        })
    });
    for _ in 0..MAX_CONFLICTS {
        let stored = match current.take() {
            Some(stored) => stored,
            None => head(store, key, &path).await?,
        };
        let mode = match stored {
            Stored::Present {
                version: Some(stored),
                ..
            } if stored > version => return Ok(Outcome::Superseded(stored)),
            _ if !store.conditional => PutMode::Overwrite,
            Stored::Absent => PutMode::Create,
            Stored::Present { tag, .. } if tag.e_tag.is_none() && tag.version.is_none() => {
                // a store that names no version of its objects cannot be asked for one
                PutMode::Overwrite
            }
            Stored::Present { tag, .. } => PutMode::Update(tag),
        };
        let options = put_options(store, mode, Some(version));
        match store
            .store
            .put_opts(&path, PutPayload::from_bytes(bytes.clone()), options)
            .await
        {
            Ok(result) => {
                return Ok(Outcome::Written(Known {
                    version,
                    tag: Some(result.into()),
                }));
            }
            // another writer stored a copy since the read: read again
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {
                tracing::debug!(key, "object changed since it was read, checking again");
            }
            Err(err) => return Err(sink_error(&format!("PUT {key}"), err)),
        }
    }
    Err(SinkError::Outage(format!(
        "object store: {key} changed under {MAX_CONFLICTS} writes in a row"
    )))
}

async fn head(
    store: &Store,
    key: &str,
    path: &object_store::path::Path,
) -> Result<Stored, SinkError> {
    let options = GetOptions {
        head: true,
        ..GetOptions::default()
    };
    match store.store.get_opts(path, options).await {
        Ok(result) => Ok(Stored::Present {
            version: result
                .attributes
                .get(&Attribute::Metadata(store.version_attribute.into()))
                .and_then(|v| v.as_ref().parse().ok()),
            tag: UpdateVersion {
                e_tag: result.meta.e_tag,
                version: result.meta.version,
            },
        }),
        Err(object_store::Error::NotFound { .. }) => Ok(Stored::Absent),
        Err(err) => Err(sink_error(&format!("HEAD {key}"), err)),
    }
}

fn put_options(store: &Store, mode: PutMode, version: Option<Version>) -> PutOptions {
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::ContentType, "application/json".into());
    if let Some(version) = version {
        attributes.insert(
            Attribute::Metadata(store.version_attribute.into()),
            version.to_string().into(),
        );
    }
    PutOptions {
        mode,
        attributes,
        ..PutOptions::default()
    }
}

pub(crate) fn local_file(store: &Store, key: &str) -> Result<PathBuf, SinkError> {
    let local = store
        .local
        .as_ref()
        .ok_or_else(|| SinkError::Fatal("a local store without its folder".into()))?;
    local
        .path_to_filesystem(&object_path(key)?)
        .map_err(|e| sink_error(key, e))
}

/// `work` on tokio's blocking threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Writes one object of a local folder as `LocalFileSystem` would (a staged `<file>#<n>`,
/// which listings skip, renamed into place, so readers never see half an object), but the
/// staged file is made 0600 and missing folders 0700. `exists`: the caller knows the object
/// is there (a newer copy replaces it), so it is staged and renamed over at once: linking a
/// new file first would only fail at the name after making and writing a file for nothing
/// (an inode allocated and freed per overwrite).
pub(crate) fn write_private_object(file: &Path, bytes: &[u8], exists: bool) -> std::io::Result<()> {
    Folders::default().write(file, bytes, exists)
}

/// The folders a writer thread has opened (`O_PATH`), so that each new object is made and
/// linked relative to its folder: two lookups of the folder's whole path per object
/// (the `O_TMPFILE` open and the link) were 3-4 % of the object projector's CPU. Held for
/// one batch.
#[derive(Default)]
pub(crate) struct Folders(std::collections::HashMap<PathBuf, std::os::fd::OwnedFd>);

impl Folders {
    /// [`write_private_object`], with this writer's open folders.
    pub(crate) fn write(&mut self, file: &Path, bytes: &[u8], exists: bool) -> std::io::Result<()> {
        use rustix::io::Errno;
        if exists {
            return write_renamed(file, bytes);
        }
        let opened_before = file.parent().is_some_and(|p| self.0.contains_key(p));
        let linked = match self.write_linked(file, bytes) {
            // the folder may have gone since this writer opened it (a new file there fails
            // with ENOENT or EPERM): once more with the folder opened, or made, anew
            Err(e) if opened_before && e.raw_os_error() != Some(Errno::EXIST.raw_os_error()) => {
                if let Some(parent) = file.parent() {
                    self.0.remove(parent);
                }
                self.write_linked(file, bytes)
            }
            linked => linked,
        };
        match linked {
            Ok(()) => Ok(()),
            // the object exists (a newer copy replaces it), or this filesystem has no
            // O_TMPFILE or this system no /proc: stage under a name and rename over
            Err(e)
                if [
                    Errno::EXIST,
                    Errno::OPNOTSUPP,
                    Errno::ISDIR,
                    Errno::INVAL,
                    Errno::NOENT,
                ]
                .iter()
                .any(|errno| e.raw_os_error() == Some(errno.raw_os_error())) =>
            {
                write_renamed(file, bytes)
            }
            Err(e) => Err(e),
        }
    }

    /// The folder of `file`, opened (and made, 0700, when missing) at its first use.
    fn folder<'a, 'f>(
        &'a mut self,
        file: &'f Path,
    ) -> std::io::Result<(std::os::fd::BorrowedFd<'a>, &'f std::ffi::OsStr)> {
        use rustix::fs::{Mode, OFlags};
        use std::os::fd::AsFd;
        let bad = || std::io::Error::other("an object path without a folder");
        let parent = file.parent().ok_or_else(bad)?;
        let name = file.file_name().ok_or_else(bad)?;
        if !self.0.contains_key(parent) {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fd = match rustix::fs::open(parent, flags, Mode::empty()) {
                Err(rustix::io::Errno::NOENT) => {
                    private_fs::create_dir_all(parent)?;
                    rustix::fs::open(parent, flags, Mode::empty())?
                }
                other => other?,
            };
            self.0.insert(parent.to_owned(), fd);
        }
        let fd = self.0.get(parent).ok_or_else(bad)?;
        Ok((fd.as_fd(), name))
    }

    /// A new object as one unnamed file (`O_TMPFILE`, 0600) in its folder, linked under its
    /// name once whole: one directory entry made, none removed, and nothing half-written is
    /// ever visible (a crash before the link leaves no file).
    fn write_linked(&mut self, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
        use rustix::fs::{AtFlags, CWD, Mode, OFlags};
        use std::os::fd::AsRawFd;
        let (folder, name) = self.folder(file)?;
        let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(private_fs::FILE_MODE);
        let mut unnamed = std::fs::File::from(rustix::fs::openat(folder, ".", flags, mode)?);
        unnamed.write_all(bytes)?;
        let proc_path = format!("/proc/self/fd/{}", unnamed.as_raw_fd());
        rustix::fs::linkat(
            CWD,
            proc_path.as_str(),
            folder,
            name,
            AtFlags::SYMLINK_FOLLOW,
        )?;
        Ok(())
    }
}

/// An object staged as `<file>#<n>` and renamed into place (over an older copy).
fn write_renamed(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut attempt = 1u32;
    let (mut staged, staged_path) = loop {
        let mut name = file.as_os_str().to_owned();
        name.push(format!("#{attempt}"));
        let staged_path = PathBuf::from(name);
        match private_fs::options()
            .write(true)
            .create_new(true)
            .open(&staged_path)
        {
            Ok(staged) => break (staged, staged_path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => attempt += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = file.parent().ok_or(e)?;
                private_fs::create_dir_all(parent)?;
            }
            Err(e) => return Err(e),
        }
    };
    let written = staged
        .write_all(bytes)
        .and_then(|()| std::fs::rename(&staged_path, file));
    if written.is_err() {
        let _ = std::fs::remove_file(&staged_path);
    }
    written
}

/// Threads writing one batch's objects.
const WRITERS: usize = 4;

/// Writes the objects from up to [`WRITERS`] of tokio's blocking threads (the batch then
/// syncs once).
pub(crate) async fn write_all(mut writes: Vec<LocalWrite>) -> Result<Vec<LocalWrite>, SinkError> {
    let per = writes.len().div_ceil(WRITERS).max(1);
    let mut tasks = Vec::with_capacity(WRITERS);
    while !writes.is_empty() {
        let chunk: Vec<LocalWrite> = writes.drain(..per.min(writes.len())).collect();
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut folders = Folders::default();
            chunk
                .iter()
                .try_for_each(|w| folders.write(&w.file, &w.bytes, w.stored))
                .map(|()| chunk)
        }));
    }
    let mut written = Vec::new();
    for task in tasks {
        let chunk = task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| crate::local::outage("cannot write an object", e))?;
        written.extend(chunk);
    }
    Ok(written)
}
