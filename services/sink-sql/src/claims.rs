//! Payload ids unique per identity (`terra_core::keys`, suffix rule): the first identity
//! that claims a base id keeps it, Terra-shaped; another identity whose base id is already
//! held (in the payload index, or earlier in this batch in log order) gets the suffixed id.
//! Claims never move, so re-deliveries land on the same row and object. The object sink
//! applies the same rule in the same order.

use std::collections::{HashMap, HashSet};

use sqlx::{Executor, Row};
use terra_projector::plan::{EventPlan, Planned};
use terra_schema::positions::Tx;
use terra_schema::tables::INGEST_PAYLOADS;
use terra_schema::{SqlError, SqlTarget, Stmt};

use crate::payloads::LOOKUP_CHUNK;

/// `(identity, base id)` of a payload row: what a final id is resolved for.
pub(crate) fn claim_key(identity: &str, base: &str) -> String {
    format!("{identity}\n{base}")
}

/// The final payload id of every `(identity, base id)` of the batch ([`claim_key`]) that
/// claims a base id: the base when the identity holds it (or is the first to claim it, in
/// log order), else the suffixed id. Every copy of a record resolves alike, whatever the
/// batch boundaries, as in the object sink.
pub(crate) async fn resolve(
    target: &SqlTarget,
    tx: &mut Tx,
    events: &[(&Planned, &EventPlan)],
) -> Result<HashMap<String, String>, SqlError> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut claiming: Vec<(&str, &str)> = Vec::new();
    for (_, event) in events {
        for row in event.payloads.iter().filter(|r| r.claims) {
            if seen.insert(claim_key(&row.identity, &row.payload_id)) {
                claiming.push((&row.identity, &row.payload_id));
            }
        }
    }
    let mut out: HashMap<String, String> = HashMap::new();
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
        select.bind_in_list(chunk.iter().copied());
        for row in tx.fetch_all(select.query()).await? {
            holders.insert(row.try_get(0)?, row.try_get(1)?);
        }
    }
    for (identity, base) in claiming {
        let holder = holders
            .entry(base.to_owned())
            .or_insert_with(|| identity.to_owned());
        let id = if holder == identity {
            base.to_owned()
        } else {
            terra_core::keys::with_suffix(base, identity)
        };
        out.insert(claim_key(identity, base), id);
    }
    Ok(out)
}
