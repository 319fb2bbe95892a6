//! Tests of the folder's versions index (`crate::local`).

use super::*;

pub(crate) fn v(ts: i64) -> Version {
    Version::from_parts([ts, 0, 0, 0])
}

pub(crate) fn write(root: &Path, key: &str, bytes: &'static [u8], version: Version) -> LocalWrite {
    LocalWrite::new(
        key.to_owned(),
        root.join(key),
        Bytes::from_static(bytes),
        version,
        None,
    )
}

#[tokio::test]
async fn a_batch_is_written_whole_and_equal_versions_are_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    std::fs::create_dir_all(&root).unwrap();
    let mut index = LocalIndex::open(&root, "").await.unwrap();
    let writes: Vec<_> = (0..37)
        .map(|i| {
            let key = format!("v/k{i}.json");
            LocalWrite::new(
                key.clone(),
                root.join(&key),
                Bytes::from(format!("{i}")),
                v(10),
                None,
            )
        })
        .collect();
    let outcomes = index.write_batch(writes, false).await.unwrap();
    assert_eq!(outcomes.len(), 37);
    assert!(outcomes.iter().all(|(_, o)| o.is_ok()));
    for i in 0..37 {
        assert_eq!(
            std::fs::read_to_string(root.join(format!("v/k{i}.json"))).unwrap(),
            i.to_string()
        );
    }
    // a replay of the same version (a batch written again after a failed sync) rewrites
    let again = index
        .write_batch(
            vec![write(&root, "v/k3.json", b"same version", v(10))],
            false,
        )
        .await
        .unwrap();
    assert_eq!(again[0].1, Ok(()));
    assert_eq!(
        std::fs::read(root.join("v/k3.json")).unwrap(),
        b"same version"
    );
}

#[tokio::test]
async fn a_newer_copy_with_the_same_bytes_moves_the_version_without_a_new_file() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    std::fs::create_dir_all(&root).unwrap();
    let mut index = LocalIndex::open(&root, "").await.unwrap();
    let first = index
        .write_batch(vec![write(&root, "v/a.json", b"body", v(10))], false)
        .await
        .unwrap();
    assert_eq!(first[0].1, Ok(()));
    let inode = std::fs::metadata(root.join("v/a.json")).unwrap().ino();
    // a retry: same bytes, later version: kept as the stored version, file untouched
    let retry = index
        .write_batch(vec![write(&root, "v/a.json", b"body", v(20))], false)
        .await
        .unwrap();
    assert_eq!(retry[0].1, Ok(()));
    assert_eq!(
        std::fs::metadata(root.join("v/a.json")).unwrap().ino(),
        inode
    );
    let older = index
        .write_batch(vec![write(&root, "v/a.json", b"other", v(15))], false)
        .await
        .unwrap();
    assert_eq!(
        older[0].1,
        Err(v(20)),
        "the retry's version is the stored one"
    );
    // different bytes, newer: a new file
    let newer = index
        .write_batch(vec![write(&root, "v/a.json", b"changed", v(30))], false)
        .await
        .unwrap();
    assert_eq!(newer[0].1, Ok(()));
    assert_eq!(std::fs::read(root.join("v/a.json")).unwrap(), b"changed");
    assert_ne!(
        std::fs::metadata(root.join("v/a.json")).unwrap().ino(),
        inode
    );
}

/// A batch whose sync fails stores no version, so the batch written again rewrites its
/// objects: after a failed sync (or a power cut before it) the bytes may never reach the
/// disk. Before, the versions were committed before the sync, and the second attempt took
/// the object for written already (same bytes, same version) and left it as it was.
#[tokio::test]
async fn a_batch_whose_sync_failed_rewrites_its_objects() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    std::fs::create_dir_all(&root).unwrap();
    let mut index = LocalIndex::open(&root, "").await.unwrap();
    index.sync = |_| Err(std::io::Error::other("injected: the disk said EIO"));
    let failed = index
        .write_batch(vec![write(&root, "v/a.json", b"body", v(10))], false)
        .await
        .err()
        .expect("the sync's failure fails the batch");
    assert!(
        failed.to_string().contains("cannot sync the folder"),
        "{failed}"
    );
    let inode = std::fs::metadata(root.join("v/a.json")).unwrap().ino();

    index.sync = syncfs;
    let again = index
        .write_batch(vec![write(&root, "v/a.json", b"body", v(10))], false)
        .await
        .unwrap();
    assert_eq!(again[0].1, Ok(()));
    assert_ne!(
        std::fs::metadata(root.join("v/a.json")).unwrap().ino(),
        inode,
        "written again, not trusted"
    );
    assert_eq!(std::fs::read(root.join("v/a.json")).unwrap(), b"body");
    // and now that it is durable, the same copy is not rewritten
    let inode = std::fs::metadata(root.join("v/a.json")).unwrap().ino();
    index
        .write_batch(vec![write(&root, "v/a.json", b"body", v(10))], false)
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(root.join("v/a.json")).unwrap().ino(),
        inode
    );
}

/// Sinks of one folder opening its new index at the same moment (two projectors started
/// together; the race test's writers): every one opens. Without the open lock SQLite answered
/// one of them "database is locked" at once (CI, issue 16's index).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sinks_opening_a_new_index_at_once_all_open() {
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("objects");
        std::fs::create_dir_all(&root).unwrap();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(8));
        let opening: Vec<_> = (0..8)
            .map(|_| {
                let (root, start) = (root.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    LocalIndex::open(&root, "").await.map(drop)
                })
            })
            .collect();
        for open in opening {
            if let Err(e) = open.await.unwrap() {
                panic!("round {round}: {e}");
            }
        }
    }
}

/// An object the index knows is replaced by staging and renaming at once; when the index is
/// wrong (the file was removed by hand) the object is still written, folders and all.
#[test]
fn a_known_object_is_replaced_by_renaming_and_a_missing_one_still_written() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v/a.json");
    write_private_object(&file, b"first", false).unwrap();
    write_private_object(&file, b"second", true).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"second");
    let gone = dir.path().join("w/x/b.json");
    write_private_object(&gone, b"stale index", true).unwrap();
    assert_eq!(std::fs::read(&gone).unwrap(), b"stale index");
    for path in [&file, &gone] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let mut names: Vec<_> = std::fs::read_dir(dir.path().join("v"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.json"], "no staged file left");
}

/// The index checkpoints its WAL every 16k pages, not SQLite's 1k, and keeps a 64 MiB page
/// cache, not 2 MB (per-connection settings: they must be set on the connection the
/// batches use).
#[tokio::test]
async fn the_index_checkpoints_every_16k_pages_with_a_64_mib_cache() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    std::fs::create_dir_all(&root).unwrap();
    let mut index = LocalIndex::open(&root, "").await.unwrap();
    let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
        .fetch_one(&mut index.conn)
        .await
        .unwrap();
    assert_eq!(pages, i64::from(WAL_AUTOCHECKPOINT_PAGES));
    assert_eq!(pages, 16_384);
    let cache: i64 = sqlx::query_scalar("PRAGMA cache_size")
        .fetch_one(&mut index.conn)
        .await
        .unwrap();
    assert_eq!(cache, -CACHE_KIB, "a 64 MiB page cache");
}

/// A writer keeps the folders it opened for its batch; a folder removed after it was opened
/// (by hand, mid-batch) is made again and the object still written, as are the next ones.
#[test]
fn a_writer_keeps_its_folders_and_survives_one_going_away() {
    use crate::write::Folders;
    let dir = tempfile::tempdir().unwrap();
    let mut folders = Folders::default();
    let a = dir.path().join("2022-03-16/sleep/a.json");
    folders.write(&a, b"a", false).unwrap();
    folders
        .write(&dir.path().join("2022-03-16/daily/b.json"), b"b", false)
        .unwrap();
    std::fs::remove_dir_all(dir.path().join("2022-03-16/sleep")).unwrap();
    for name in ["c", "d"] {
        let file = dir.path().join(format!("2022-03-16/sleep/{name}.json"));
        folders.write(&file, name.as_bytes(), false).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), name.as_bytes());
    }
    assert!(!a.exists());
    assert_eq!(
        std::fs::read(dir.path().join("2022-03-16/daily/b.json")).unwrap(),
        b"b"
    );
    // an object already there, not known to the caller: replaced, nothing staged left
    folders
        .write(&dir.path().join("2022-03-16/daily/b.json"), b"b2", false)
        .unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path().join("2022-03-16/daily"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["b.json"]);
    assert_eq!(
        std::fs::read(dir.path().join("2022-03-16/daily/b.json")).unwrap(),
        b"b2"
    );
}

/// A batch that fails commits none of its claims: another identity asking later (after a
/// restart, say) may take the base id, as it would have had the failed batch never run.
#[tokio::test]
async fn a_failed_batch_commits_no_claim() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    std::fs::create_dir_all(&root).unwrap();
    let mut index = LocalIndex::open(&root, "").await.unwrap();
    index.sync = |_| Err(std::io::Error::other("injected: the disk said EIO"));
    let held = index
        .claim(&[("v/a".into(), "first".into())])
        .await
        .unwrap();
    assert_eq!(held["v/a"], "first");
    index
        .write_batch(vec![write(&root, "v/a.json", b"body", v(10))], false)
        .await
        .err()
        .expect("the sync fails the batch");
    index.sync = syncfs;
    let held = index
        .claim(&[("v/a".into(), "second".into())])
        .await
        .unwrap();
    assert_eq!(held["v/a"], "second");
    index.write_batch(Vec::new(), false).await.unwrap();
    // a transaction left open by a batch that never reached its write is rolled back
    index
        .claim(&[("v/b".into(), "abandoned".into())])
        .await
        .unwrap();
    index.begin().await.unwrap();
    let held = index
        .claim(&[
            ("v/a".into(), "third".into()),
            ("v/b".into(), "next".into()),
        ])
        .await
        .unwrap();
    assert_eq!(
        (held["v/a"].as_str(), held["v/b"].as_str()),
        ("second", "next")
    );
}

/// A COMMIT that fails (here a deferred constraint; in life a full disk or an I/O error)
/// leaves SQLite's transaction open: it is rolled back, so the next batch begins.
#[tokio::test]
async fn a_failed_commit_does_not_wedge_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    std::fs::create_dir_all(&root).unwrap();
    let mut index = LocalIndex::open(&root, "").await.unwrap();
    for sql in [
        "PRAGMA foreign_keys = ON",
        "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
        "CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
    ] {
        sqlx::query(sql).execute(&mut index.conn).await.unwrap();
    }
    index.begin().await.unwrap();
    sqlx::query("INSERT INTO child VALUES (1)")
        .execute(&mut index.conn)
        .await
        .unwrap();
    let err = index
        .write_batch(vec![write(&root, "v/a.json", b"body", v(10))], false)
        .await
        .err()
        .expect("the commit fails");
    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
    let again = index
        .write_batch(vec![write(&root, "v/a.json", b"body", v(10))], false)
        .await
        .unwrap();
    assert_eq!(again[0].1, Ok(()));
    let children: i64 = sqlx::query_scalar("SELECT count(*) FROM child")
        .fetch_one(&mut index.conn)
        .await
        .unwrap();
    assert_eq!(children, 0, "the failed batch was rolled back");
}
