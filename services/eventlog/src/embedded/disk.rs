//! The file operations the embedded log makes, behind one trait so that a test can run the
//! log on a simulated disk that loses everything not synced when it "crashes" (`SimDisk`,
//! behind `test-hooks`). A `kill -9` cannot show that: the kernel keeps the page cache, so a
//! log that never synced would pass it.
//!
//! The product uses [`OsDisk`]: files 0600 and folders 0700 ([`crate::private_fs`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::private_fs;

/// A file the log appends to.
pub trait AppendFile: Send {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes every byte written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

/// A file the log reads at positions.
pub trait ReadFile: Send + Sync {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
}

/// The file system under one embedded log.
pub trait Disk: Send + Sync + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the folder's entries (files created, renamed or removed in it) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Names of the files and folders in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> bool;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens `path` for appending, creating it (empty) when missing.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Takes the folder's single-process lock, held until the returned guard is dropped.
    fn lock(&self, dir: &Path) -> io::Result<Box<dyn Send + Sync>>;

    /// Replaces `path` with `contents` so that a crash leaves the old or the new file: a
    /// temporary file beside it, synced, renamed over it, then the folder synced.
    fn write_atomically(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        if self.exists(&tmp) {
            self.remove(&tmp)?;
        }
        let mut file = self.open_append(&tmp)?;
        file.write_all(contents)?;
        file.sync_data()?;
        drop(file);
        self.rename(&tmp, path)?;
        self.sync_dir(path.parent().unwrap_or(Path::new(".")))
    }
}

/// The real file system.
pub struct OsDisk;

struct OsFile(File);

impl AppendFile for OsFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl ReadFile for OsFile {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, at)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Disk for OsDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        private_fs::create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let file = private_fs::options()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadFile>> {
        Ok(Arc::new(OsFile(File::open(path)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn lock(&self, dir: &Path) -> io::Result<Box<dyn Send + Sync>> {
        let lock = private_fs::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        private_fs::tighten_and_warn(&dir.join("LOCK"));
        lock_with_grace(&lock).map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the embedded log in {} is open in another process",
                    dir.display()
                ),
            )
        })?;
        Ok(Box::new(lock))
    }
    fn write_atomically(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        private_fs::write_atomically(path, contents)
    }
}

/// Takes the folder's lock, waiting briefly: a predecessor that is shutting down (a
/// restarted pod, a handle dropped a moment ago) releases it within moments.
fn lock_with_grace(lock: &File) -> Result<(), std::fs::TryLockError> {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(2);
    let backoff = terra_runtime::Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
    let mut attempt = 0;
    loop {
        match lock.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(backoff.delay(attempt));
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(any(test, feature = "test-hooks"))]
pub use sim::SimDisk;

#[cfg(any(test, feature = "test-hooks"))]
mod sim {
    //! A disk in memory that keeps, per file, what was written and what was synced, and per
    //! folder, which names were synced. [`SimDisk::crash`] keeps only the synced state, as a
    //! power cut may: unsynced bytes, unsynced new files, renames and removals are gone. File
    //! handles opened before a crash fail from then on (the crashed process is gone).

    use std::collections::{BTreeMap, BTreeSet};
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Condvar, Mutex};

    use super::{AppendFile, Disk, ReadFile};

    fn parent_of(path: &Path) -> PathBuf {
        path.parent().map(Path::to_owned).unwrap_or_default()
    }

    #[derive(Default, Clone)]
    struct Inode {
        data: Vec<u8>,
        synced: Vec<u8>,
    }

    #[derive(Default)]
    struct State {
        epoch: u64,
        next_inode: u64,
        inodes: BTreeMap<u64, Inode>,
        /// Path → inode, as seen by running code.
        names: BTreeMap<PathBuf, u64>,
        /// Path → inode, as a crash would leave it.
        synced_names: BTreeMap<PathBuf, u64>,
        dirs: BTreeSet<PathBuf>,
        /// When set, `sync_data` does nothing (a log that forgot to sync, to show the test
        /// catches it).
        syncs_ignored: bool,
        /// Files that can still be created (none: no limit); creating one more fails (a full
        /// disk, no file descriptors left).
        creates_left: Option<u32>,
    }

    /// See the module's documentation. Clones share the disk.
    #[derive(Clone, Default)]
    pub struct SimDisk {
        state: Arc<Mutex<State>>,
        /// While true, `sync_data` waits (a slow disk, to fill the append queue).
        held: Arc<(Mutex<bool>, Condvar)>,
    }

    fn gone() -> io::Error {
        io::Error::other("simulated crash: this handle belongs to a process that died")
    }

    fn not_found(path: &Path) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: no such file", path.display()),
        )
    }

    impl SimDisk {
        pub fn new() -> Self {
            Self::default()
        }

        /// From now on `sync_data` is a no-op: the disk behaves as if the log did not sync.
        pub fn ignore_syncs(&self) {
            self.state.lock().unwrap().syncs_ignored = true;
        }

        /// From now on `allowed` more files can be created, then creating fails (`None`: no
        /// limit again).
        pub fn limit_creates(&self, allowed: Option<u32>) {
            self.state.lock().unwrap().creates_left = allowed;
        }

        /// Makes `sync_data` wait (`true`) until released (`false`).
        pub fn hold_syncs(&self, hold: bool) {
            let (held, changed) = &*self.held;
            *held.lock().unwrap() = hold;
            changed.notify_all();
        }

        /// A power cut: every file goes back to its synced bytes, every folder to its synced
        /// names; handles opened before fail from now on.
        pub fn crash(&self) {
            let mut state = self.state.lock().unwrap();
            state.epoch += 1;
            state.names = state.synced_names.clone();
            for inode in state.inodes.values_mut() {
                inode.data = inode.synced.clone();
            }
        }

        /// Flips one bit of the file at `path` (synced and unsynced bytes alike), for
        /// corruption tests.
        pub fn flip_bit(&self, path: &Path, at: u64) {
            let mut state = self.state.lock().unwrap();
            let id = state.names[path];
            let inode = state.inodes.get_mut(&id).unwrap();
            inode.data[at as usize] ^= 1;
            if (at as usize) < inode.synced.len() {
                inode.synced[at as usize] ^= 1;
            }
        }
    }

    struct SimFile {
        disk: SimDisk,
        inode: u64,
        epoch: u64,
    }

    impl SimFile {
        fn with<T>(&self, f: impl FnOnce(&mut State, u64) -> T) -> io::Result<T> {
            let mut state = self.disk.state.lock().unwrap();
            if state.epoch != self.epoch {
                return Err(gone());
            }
            Ok(f(&mut state, self.inode))
        }
    }

    impl AppendFile for SimFile {
        fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.with(|s, i| s.inodes.get_mut(&i).unwrap().data.extend_from_slice(bytes))
        }
        fn sync_data(&mut self) -> io::Result<()> {
            let (held, changed) = &*self.disk.held;
            drop(
                changed
                    .wait_while(held.lock().unwrap(), |held| *held)
                    .unwrap(),
            );
            self.with(|s, i| {
                if !s.syncs_ignored {
                    let inode = s.inodes.get_mut(&i).unwrap();
                    inode.synced = inode.data.clone();
                }
            })
        }
        fn truncate(&mut self, len: u64) -> io::Result<()> {
            self.with(|s, i| s.inodes.get_mut(&i).unwrap().data.truncate(len as usize))
        }
    }

    impl ReadFile for SimFile {
        fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
            self.with(|s, i| {
                let data = &s.inodes[&i].data;
                let at = at as usize;
                if at + buf.len() > data.len() {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                buf.copy_from_slice(&data[at..at + buf.len()]);
                Ok(())
            })?
        }
        fn size(&self) -> io::Result<u64> {
            self.with(|s, i| s.inodes[&i].data.len() as u64)
        }
    }

    impl Disk for SimDisk {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            // folders are kept simple: they exist once made, across crashes
            let mut state = self.state.lock().unwrap();
            let mut at = dir.to_owned();
            loop {
                state.dirs.insert(at.clone());
                if !at.pop() || at.as_os_str().is_empty() {
                    return Ok(());
                }
            }
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            let in_dir = |p: &PathBuf| parent_of(p) == dir;
            let synced: Vec<(PathBuf, u64)> = state
                .names
                .iter()
                .filter(|(p, _)| in_dir(p))
                .map(|(p, i)| (p.clone(), *i))
                .collect();
            state.synced_names.retain(|p, _| !in_dir(p));
            state.synced_names.extend(synced);
            Ok(())
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            let state = self.state.lock().unwrap();
            if !state.dirs.contains(dir) {
                return Err(not_found(dir));
            }
            let files = state.names.keys().filter(|p| parent_of(p) == dir);
            let dirs = state.dirs.iter().filter(|p| parent_of(p) == dir);
            Ok(files
                .chain(dirs)
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect())
        }
        fn exists(&self, path: &Path) -> bool {
            let state = self.state.lock().unwrap();
            state.names.contains_key(path) || state.dirs.contains(path)
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            let state = self.state.lock().unwrap();
            let id = state.names.get(path).ok_or_else(|| not_found(path))?;
            Ok(state.inodes[id].data.clone())
        }
        fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
            let mut state = self.state.lock().unwrap();
            if !state.dirs.contains(&parent_of(path)) {
                return Err(not_found(&parent_of(path)));
            }
            let inode = match state.names.get(path) {
                Some(id) => *id,
                None if state.creates_left == Some(0) => {
                    return Err(io::Error::other("simulated: no space left on device"));
                }
                None => {
                    if let Some(left) = state.creates_left.as_mut() {
                        *left -= 1;
                    }
                    state.next_inode += 1;
                    let id = state.next_inode;
                    state.inodes.insert(id, Inode::default());
                    state.names.insert(path.to_owned(), id);
                    id
                }
            };
            Ok(Box::new(SimFile {
                disk: self.clone(),
                inode,
                epoch: state.epoch,
            }))
        }
        fn open_read(&self, path: &Path) -> io::Result<Arc<dyn ReadFile>> {
            let state = self.state.lock().unwrap();
            let inode = *state.names.get(path).ok_or_else(|| not_found(path))?;
            Ok(Arc::new(SimFile {
                disk: self.clone(),
                inode,
                epoch: state.epoch,
            }))
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            let id = state.names.remove(from).ok_or_else(|| not_found(from))?;
            state.names.insert(to.to_owned(), id);
            Ok(())
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            state.names.remove(path).ok_or_else(|| not_found(path))?;
            Ok(())
        }
        fn lock(&self, _dir: &Path) -> io::Result<Box<dyn Send + Sync>> {
            Ok(Box::new(()))
        }
    }
}
