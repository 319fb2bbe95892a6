//! Tests of the folder's versions index (`crate::local`).

use super::*;

fn v(ts: i64) -> Version {
    Version::from_parts([ts, 0, 0, 0])
}

fn write(root: &Path, key: &str, bytes: &'static [u8], version: Version) -> LocalWrite {
    LocalWrite::new(
        key.to_owned(),
        root.join(key),
        Bytes::from_static(bytes),
        version,
        None,
    )
}

#[tokio::test]
async fn an_earlier_versions_files_are_imported_and_still_decide() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    std::fs::create_dir_all(&root).unwrap();
    // as an earlier version left them: a padded version file, a bare one, a claim marker
    let sidecars = versions_dir(&root);
    std::fs::create_dir_all(sidecars.join("2022-03-16/sleep")).unwrap();
    std::fs::create_dir_all(sidecars.join("_claims/2022-03-16/sleep")).unwrap();
    let padded = format!("{:<96}", v(500).to_string());
    std::fs::write(sidecars.join("2022-03-16/sleep/a.json"), padded).unwrap();
    std::fs::write(sidecars.join("2022-03-16/sleep/b.json"), v(100).to_string()).unwrap();
    std::fs::write(sidecars.join("_claims/2022-03-16/sleep/a"), "identity-1").unwrap();

    let mut index = LocalIndex::open(&root, "").await.unwrap();
    let held = index
        .claim(&[
            ("2022-03-16/sleep/a".into(), "identity-2".into()),
            ("2022-03-16/sleep/c".into(), "identity-3".into()),
        ])
        .await
        .unwrap();
    assert_eq!(
        held["2022-03-16/sleep/a"], "identity-1",
        "the imported claim holds"
    );
    assert_eq!(
        held["2022-03-16/sleep/c"], "identity-3",
        "a new base id is claimed"
    );
    let outcomes = index
        .write_batch(
            vec![
                write(&root, "2022-03-16/sleep/a.json", b"older", v(400)),
                write(&root, "2022-03-16/sleep/b.json", b"newer", v(200)),
            ],
            false,
        )
        .await
        .unwrap();
    let by_key: HashMap<_, _> = outcomes.iter().map(|(w, o)| (w.key.as_str(), *o)).collect();
    assert_eq!(by_key["2022-03-16/sleep/a.json"], Err(v(500)));
    assert_eq!(by_key["2022-03-16/sleep/b.json"], Ok(()));
    assert!(!root.join("2022-03-16/sleep/a.json").exists());
    assert_eq!(
        std::fs::read(root.join("2022-03-16/sleep/b.json")).unwrap(),
        b"newer"
    );

    // imported once: a reopened index keeps what it stored since, and claims stay put
    drop(index);
    std::fs::write(sidecars.join("2022-03-16/sleep/b.json"), v(50).to_string()).unwrap();
    let mut index = LocalIndex::open(&root, "").await.unwrap();
    let outcomes = index
        .write_batch(
            vec![write(&root, "2022-03-16/sleep/b.json", b"old", v(150))],
            false,
        )
        .await
        .unwrap();
    assert_eq!(outcomes[0].1, Err(v(200)));
    let held = index
        .claim(&[("2022-03-16/sleep/c".into(), "identity-4".into())])
        .await
        .unwrap();
    assert_eq!(held["2022-03-16/sleep/c"], "identity-3");
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

/// An index of 2026-12 (separate `versions` and `claims` tables) is brought forward into
/// `objects` when opened: its versions still decide, a copy with its stored bytes is still
/// not rewritten, its claims still hold (on the base ids' keys, under the store's prefix),
/// and the old tables are gone.
#[tokio::test]
async fn an_index_with_versions_and_claims_tables_is_brought_forward() {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    std::fs::create_dir_all(&root).unwrap();
    let holder = hex::encode(sha2::Sha256::digest(b"identity-1"));
    {
        std::fs::create_dir_all(versions_dir(&root)).unwrap();
        let path = versions_dir(&root).join(INDEX_FILE);
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut old = SqliteConnection::connect_with(&options).await.unwrap();
        for sql in [
            "CREATE TABLE versions (key TEXT PRIMARY KEY, version TEXT NOT NULL, digest TEXT NULL) WITHOUT ROWID",
            "CREATE TABLE claims (base TEXT PRIMARY KEY, identity TEXT NOT NULL) WITHOUT ROWID",
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
            "INSERT INTO meta VALUES ('sidecars_imported', '0')",
        ] {
            sqlx::query(sql).execute(&mut old).await.unwrap();
        }
        let body_digest = hex::encode(sha2::Sha256::digest(b"body"));
        for (key, version, digest) in [
            ("terra/v/a.json", v(500), None),
            ("terra/v/b.json", v(100), Some(body_digest.as_str())),
        ] {
            sqlx::query("INSERT INTO versions VALUES (?, ?, ?)")
                .bind(key)
                .bind(version.to_string())
                .bind(digest)
                .execute(&mut old)
                .await
                .unwrap();
        }
        for (base, identity) in [("v/a", holder.as_str()), ("v/c", "not-a-hash")] {
            sqlx::query("INSERT INTO claims VALUES (?, ?)")
                .bind(base)
                .bind(identity)
                .execute(&mut old)
                .await
                .unwrap();
        }
    }
    std::fs::create_dir_all(root.join("terra/v")).unwrap();
    std::fs::write(root.join("terra/v/b.json"), b"body").unwrap();
    let inode = std::fs::metadata(root.join("terra/v/b.json"))
        .unwrap()
        .ino();

    let mut index = LocalIndex::open(&root, "/terra/").await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut index.conn)
            .await
            .unwrap();
    assert_eq!(tables, ["meta", "objects"]);
    let held = index
        .claim(&[
            ("v/a".into(), "someone-else".into()),
            ("v/c".into(), "someone-else".into()),
            ("v/d".into(), "first-here".into()),
        ])
        .await
        .unwrap();
    assert_eq!(held["v/a"], holder, "a claim by a hashed identity holds");
    assert_eq!(held["v/c"], "not-a-hash", "and one by any other text");
    assert_eq!(held["v/d"], "first-here", "a new base id is claimed");
    let key = |k: &str| format!("terra/{k}");
    let outcomes = index
        .write_batch(
            vec![
                write(&root, &key("v/a.json"), b"older", v(400)),
                write(&root, &key("v/b.json"), b"body", v(200)),
            ],
            false,
        )
        .await
        .unwrap();
    let by_key: HashMap<_, _> = outcomes.iter().map(|(w, o)| (w.key.clone(), *o)).collect();
    assert_eq!(
        by_key[&key("v/a.json")],
        Err(v(500)),
        "the moved version decides"
    );
    assert_eq!(by_key[&key("v/b.json")], Ok(()));
    assert_eq!(
        std::fs::metadata(root.join("terra/v/b.json"))
            .unwrap()
            .ino(),
        inode,
        "the moved digest matches the stored bytes: not rewritten"
    );
    // the hashed identity is kept as its 32 bytes, and a new claim is committed with the batch
    let kinds: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT key, typeof(holder), length(holder) FROM objects WHERE holder IS NOT NULL ORDER BY key",
    )
    .fetch_all(&mut index.conn)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        [
            (key("v/a.json"), "blob".into(), 32),
            (key("v/c.json"), "text".into(), 10),
            (key("v/d.json"), "text".into(), 10),
        ]
    );
    drop(index);
    let mut index = LocalIndex::open(&root, "terra").await.unwrap();
    let held = index
        .claim(&[("v/d".into(), "second".into())])
        .await
        .unwrap();
    assert_eq!(held["v/d"], "first-here", "claims survive a reopen");
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
