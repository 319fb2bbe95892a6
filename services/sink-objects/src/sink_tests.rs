//! The suffix rule in the object sink (issue 14 §2), on a local folder: records that share a
//! base key (two activities starting in the same second, two planned workouts on one date)
//! get one object each, the first at Terra's key, re-deliveries at their own, nothing
//! overwritten; and the claims survive a new sink (a restart).

use terra_eventlog::Position;
use terra_projector::Sink;
use terra_projector::plan::{Plan, Planned, plan_envelope};

use super::*;
use crate::store::StoreConfig;

const U: &str = "0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3";
const T0: i64 = 1_780_000_000;

fn activity(summary_id: &str, name: &str) -> Vec<u8> {
    format!(r#"{{"type": "activity", "user": {{"user_id": "{U}", "provider": "GARMIN"}}, "data": [{{"metadata": {{"summary_id": "{summary_id}", "name": "{name}", "start_time": "2026-10-04T07:15:00.000000+02:00"}}}}], "version": "2022-03-16"}}"#).into_bytes()
}

fn planned(offset: u64, body: &[u8], ordering_ms: i64) -> Planned {
    let envelope = terra_testkit::envelope(body, Some(ordering_ms), T0, None);
    plan_envelope(
        Position {
            partition: 0,
            offset,
        },
        &envelope,
    )
}

fn identity_of(p: &Planned, index: usize) -> String {
    match &p.plan {
        Plan::Event(e) => e.payloads[index].identity.clone(),
        Plan::Dead(d) => panic!("{}", d.reason),
    }
}

fn open(dir: &std::path::Path) -> ObjectSink {
    let store = Store::open(&StoreConfig {
        url: dir.join("objects").display().to_string(),
        ..StoreConfig::default()
    })
    .unwrap();
    ObjectSink::new(store, ObjectSinkConfig::default(), None)
}

fn read(dir: &std::path::Path, id: &str) -> String {
    std::fs::read_to_string(dir.join("objects").join(format!("{id}.json")))
        .unwrap_or_else(|e| panic!("{id}: {e}"))
}

#[tokio::test]
async fn records_sharing_a_base_key_get_an_object_each() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("2022-03-16/activity/{U}-2026-10-04T05:15:00Z");
    let first = planned(0, &activity("a-1", "first"), T0 * 1000);
    let second = planned(1, &activity("a-2", "second"), T0 * 1000 + 1);
    let suffixed = terra_core::keys::with_suffix(&base, &identity_of(&second, 0));
    let mut sink = open(dir.path());
    sink.write(&[first]).await.unwrap();
    sink.write(&[second]).await.unwrap();
    assert!(read(dir.path(), &base).contains("\"first\""));
    assert!(read(dir.path(), &suffixed).contains("\"second\""));

    // a restarted sink: the claims are in the store; a newer copy of the second replaces
    // its own object only
    let mut sink = open(dir.path());
    let edited = planned(2, &activity("a-2", "second, edited"), T0 * 1000 + 9);
    sink.write(&[edited]).await.unwrap();
    assert!(read(dir.path(), &base).contains("\"first\""));
    assert!(read(dir.path(), &suffixed).contains("\"second, edited\""));

    // two planned workouts on one date, in one body
    let body = format!(
        r#"{{"type": "planned_workout", "user": {{"user_id": "{U}"}}, "data": [{{"planned_workout_id": "p-1", "planned_date": "2026-07-03"}}, {{"planned_workout_id": "p-2", "planned_date": "2026-07-03"}}], "version": "2022-03-16"}}"#
    );
    let both = planned(3, body.as_bytes(), T0 * 1000);
    let second_id = identity_of(&both, 1);
    sink.write(&[both]).await.unwrap();
    let date = format!("2022-03-16/planned_workout/{U}-2026-07-03");
    assert!(read(dir.path(), &date).contains("p-1"));
    assert!(
        read(
            dir.path(),
            &terra_core::keys::with_suffix(&date, &second_id)
        )
        .contains("p-2")
    );
}
