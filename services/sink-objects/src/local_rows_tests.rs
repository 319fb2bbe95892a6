//! Tests of the folder index's statements (`crate::local_rows`), through the index.

use std::path::Path;

use bytes::Bytes;
use sha2::Digest;
use sqlx::Connection;

use super::*;
use crate::local::tests::{v, write};
use crate::local::{LocalIndex, LocalWrite};

async fn index(root: &Path) -> LocalIndex {
    std::fs::create_dir_all(root).unwrap();
    LocalIndex::open(root, "").await.unwrap()
}

async fn row(index: &mut LocalIndex, key: &str) -> Stored {
    lookup(&mut index.conn, &[key])
        .await
        .unwrap()
        .remove(key)
        .unwrap_or_default()
}

/// Batches of every size from 1 to 80 keys, half of them new and half replacing, read and
/// write through a few statement texts, each prepared once: before, every batch's `VALUES`
/// and `IN` lists were statements of their own length (and filled sqlx's cache of 100).
#[tokio::test]
async fn batches_of_every_size_reuse_a_few_statements() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let mut index = index(&root).await;
    let opened = index.conn.cached_statements_size();
    for size in 1..=80usize {
        let writes = (0..size)
            .map(|i| {
                // keys k0.. are replaced by later batches, keys n<size>-<i> are new
                let key = if i % 2 == 0 {
                    format!("v/k{i}.json")
                } else {
                    format!("v/n{size}-{i}.json")
                };
                LocalWrite::new(
                    key.clone(),
                    root.join(&key),
                    Bytes::from(format!("{size}/{i}")),
                    v(size as i64),
                    None,
                )
            })
            .collect();
        let outcomes = index.write_batch(writes, false).await.unwrap();
        assert!(outcomes.iter().all(|(_, o)| o.is_ok()), "batch {size}");
    }
    let cached = index.conn.cached_statements_size() - opened;
    // at most 4 insert sizes (64, 16, 4, 1), 4 upsert sizes, 6 lookup sizes (1 to 1,024),
    // BEGIN and COMMIT; before, 80 inserts, 80 upserts and 80 lookups of their own length
    assert!(cached <= 16, "{cached} statements prepared");
    let k0 = row(&mut index, "v/k0.json").await;
    assert!(k0.in_index);
    assert_eq!(k0.version, Some(v(80)));
    assert_eq!(std::fs::read(root.join("v/k0.json")).unwrap(), b"80/0");
    let new = row(&mut index, "v/n79-77.json").await;
    assert_eq!(new.version, Some(v(79)));
    assert!(!row(&mut index, "v/n79-78.json").await.in_index);
}

/// A key whose row holds only a claim (no object yet) is written by replacing that row, its
/// claim kept; a key whose row holds only an object is claimed by replacing it, its version
/// kept. A plain insert of either would fail on the row that is there.
#[tokio::test]
async fn a_claim_and_an_object_of_the_same_key_share_its_row_in_either_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let mut index = index(&root).await;
    index
        .claim(&[("v/a".into(), "first".into())])
        .await
        .unwrap();
    index.write_batch(Vec::new(), false).await.unwrap();
    let claimed = row(&mut index, "v/a.json").await;
    assert_eq!(
        (claimed.holder.as_deref(), claimed.version),
        (Some("first"), None)
    );

    index
        .write_batch(vec![write(&root, "v/a.json", b"body", v(10))], false)
        .await
        .unwrap();
    let both = row(&mut index, "v/a.json").await;
    assert_eq!(
        (both.holder.as_deref(), both.version),
        (Some("first"), Some(v(10)))
    );

    index
        .write_batch(vec![write(&root, "v/b.json", b"body", v(10))], false)
        .await
        .unwrap();
    index
        .claim(&[("v/b".into(), "second".into())])
        .await
        .unwrap();
    index.write_batch(Vec::new(), false).await.unwrap();
    let later = row(&mut index, "v/b.json").await;
    assert_eq!(
        (later.holder.as_deref(), later.version),
        (Some("second"), Some(v(10)))
    );
    let digest: [u8; 32] = sha2::Sha256::digest(b"body").into();
    assert_eq!(later.digest.as_deref(), Some(&digest[..]));

    // claimed and written in one batch: one new row with both
    index
        .claim(&[("v/c".into(), "third".into())])
        .await
        .unwrap();
    index
        .write_batch(vec![write(&root, "v/c.json", b"body", v(5))], false)
        .await
        .unwrap();
    let one = row(&mut index, "v/c.json").await;
    assert_eq!(
        (one.holder.as_deref(), one.version),
        (Some("third"), Some(v(5)))
    );
}

/// A plain insert of a key that has a row fails (`INSERT OR FAIL`): the writer relies on its
/// lookup to choose, and a wrong choice is an error, never a silently kept stale row.
#[tokio::test]
async fn an_insert_of_a_key_already_there_fails() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let mut index = index(&root).await;
    index
        .write_batch(vec![write(&root, "v/a.json", b"body", v(10))], false)
        .await
        .unwrap();
    let again = IndexRow {
        key: "v/a.json",
        version: Some(v(20).to_string()),
        digest: None,
        holder: None,
    };
    let mut tx = index.conn.begin().await.unwrap();
    let err = insert(&mut tx, std::slice::from_ref(&again))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    tx.rollback().await.unwrap();
    upsert(&mut index.conn, &[again]).await.unwrap();
    let moved = row(&mut index, "v/a.json").await;
    assert_eq!(moved.version, Some(v(20)));
    assert!(
        moved.digest.is_some(),
        "an upsert without a digest keeps it"
    );
}
