//! Payload ids unique per identity (`terra_core::keys`, suffix rule): the first identity
//! that claims a base id keeps it, Terra-shaped; another identity whose base id is already
//! held (in the payload index, or earlier in this batch in log order) gets the suffixed id.
//! An identity the index already holds keeps the id it was given, so re-deliveries land on
//! the same row and object. The object sink applies the same rule in the same order.

use std::collections::{HashMap, HashSet};

use sqlx::{Executor, Row};
use terra_projector::plan::{EventPlan, Planned};
use terra_schema::positions::Tx;
use terra_schema::tables::INGEST_PAYLOADS;
use terra_schema::{SqlError, SqlTarget, Stmt};

const LOOKUP_CHUNK: usize = 1_000;

/// The final payload id of every identity in the batch whose id differs from its row's
/// `payload_id` (`stored`: identity → the id the index holds for it).
pub(crate) async fn resolve(
    target: &SqlTarget,
    tx: &mut Tx,
    events: &[(&Planned, &EventPlan)],
    stored: &HashMap<String, String>,
) -> Result<HashMap<String, String>, SqlError> {
    // new identities claiming a base id, in log order (first appearance)
    let mut seen: HashSet<&str> = HashSet::new();
    let mut claiming: Vec<(&str, &str)> = Vec::new();
    let mut out: HashMap<String, String> = HashMap::new();
    for (_, event) in events {
        for row in &event.payloads {
            if !seen.insert(row.identity.as_str()) {
                continue;
            }
            match stored.get(&row.identity) {
                Some(id) if *id != row.payload_id => {
                    out.insert(row.identity.clone(), id.clone());
                }
                Some(_) => {}
                None if row.claims => claiming.push((&row.identity, &row.payload_id)),
                None => {}
            }
        }
    }
    if claiming.is_empty() {
        return Ok(out);
    }
    let bases: Vec<&str> = {
        let mut b: Vec<&str> = claiming.iter().map(|(_, base)| *base).collect();
        b.sort_unstable();
        b.dedup();
        b
    };
    let mut holders: HashMap<String, String> = HashMap::new();
    for chunk in bases.chunks(LOOKUP_CHUNK) {
        let mut select = Stmt::new(
            target.dialect(),
            format!(
                "SELECT payload_id, row_key FROM {} WHERE payload_id IN ",
                target.table(INGEST_PAYLOADS)
            ),
        );
        select.bind_list(chunk.iter().copied());
        for row in tx.fetch_all(select.query()).await? {
            holders.insert(row.try_get(0)?, row.try_get(1)?);
        }
    }
    for (identity, base) in claiming {
        match holders.get(base) {
            Some(holder) if holder != identity => {
                out.insert(
                    identity.to_owned(),
                    terra_core::keys::with_suffix(base, identity),
                );
            }
            Some(_) => {}
            None => {
                holders.insert(base.to_owned(), identity.to_owned());
            }
        }
    }
    Ok(out)
}
