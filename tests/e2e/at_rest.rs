//! Health data at rest: `standalone` under the usual umask 022 keeps its whole `./data`
//! tree (log, SQLite database with its -wal/-shm, objects, version sidecars, dead letters,
//! generated secrets) unreadable by other local users: folders 0700, files 0600.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{BIN, Server, serve, terminate, terra_ingest, text};

/// `terra-ingest <args>` started by a shell that set umask 022 first.
fn start_under_umask_022(cwd: &Path, args: &[&str]) -> Server {
    let mut command = Command::new("sh");
    command
        .args(["-c", "umask 022 && exec \"$0\" \"$@\"", BIN])
        .args(args);
    serve(command, cwd, &[])
}

/// (path, is a folder, mode) of everything under `dir`.
fn tree(dir: &Path) -> Vec<(PathBuf, bool, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // removed meanwhile (a staged or temporary file)
        };
        out.push((
            path.clone(),
            meta.is_dir(),
            meta.permissions().mode() & 0o777,
        ));
        if meta.is_dir() {
            out.extend(tree(&path));
        }
    }
    out
}

fn assert_private(data: &Path) -> Vec<(PathBuf, bool, u32)> {
    let mode = std::fs::metadata(data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data dir is {mode:o}");
    let entries = tree(data);
    for (path, is_dir, mode) in &entries {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }
    entries
}

#[tokio::test]
async fn standalone_keeps_its_data_tree_private_under_umask_022() {
    let cwd = tempfile::tempdir().unwrap();
    let mut server =
        start_under_umask_022(cwd.path(), &["standalone", "--grpc-addr", "127.0.0.1:0"]);
    let url = format!("http://{}/webhook", server.addr);
    let not_json = cwd.path().join("not-json.txt");
    std::fs::write(&not_json, "not json").unwrap();
    for source in [
        ["--fixture", "sleep"],
        ["--file", not_json.to_str().unwrap()],
    ] {
        let args = [&["send", "--url", url.as_str()][..], &source[..]].concat();
        let out = terra_ingest(cwd.path(), &args);
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    // both projections done: the sleep object and the dead letter's body are there
    let data = cwd.path().join("data");
    let deadline = Instant::now() + Duration::from_secs(20);
    let projected = |entries: &[(PathBuf, bool, u32)]| {
        let has = |needle: &str| {
            entries
                .iter()
                .any(|(p, _, _)| p.to_string_lossy().contains(needle))
        };
        has("objects/2022-03-16/sleep/") && has("_dead-letters/") && has(".objects-versions/")
    };
    while !projected(&tree(&data)) {
        assert!(
            Instant::now() < deadline,
            "not projected: {:?}",
            tree(&data)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // while it runs (SQLite's -wal and -shm exist), and after it stopped
    let running = assert_private(&data);
    for file in [
        "signing-secret",
        "query-token-key",
        "terra.db",
        "terra.db-wal",
        "terra.db-shm",
        "log/segments/00000000000000000000.log",
        "log/meta.json",
        "log/LOCK",
    ] {
        assert!(
            running.iter().any(|(p, _, _)| p == &data.join(file)),
            "{file} missing from {running:?}"
        );
    }
    assert!(terminate(&mut server).success());
    assert_private(&data);
}
