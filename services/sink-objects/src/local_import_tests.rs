//! Tests of bringing earlier folder indexes forward (`crate::local_import`).

use std::collections::HashMap;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

use crate::local::tests::{v, write};
use crate::local::{INDEX_FILE, LocalIndex};
use crate::sink::versions_dir;

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
