//! The event shapes Terra sends today (issue 14 §1-2): each against both classification
//! paths, which must agree.

use super::tests::TERRA_EXAMPLE_USER;
use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../tests/fixtures/webhooks/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Both paths, and that they agree (the fast one may decline).
fn both(body: &[u8]) -> Classification {
    let (fast, slow) = both_paths(body);
    let slow = slow.expect("JSON");
    if let Some(fast) = fast {
        assert_eq!(fast, slow, "the two paths disagree");
    }
    slow
}

#[test]
fn lab_reports_have_no_user_no_records_and_their_event_id() {
    for (name, event_id) in [
        (
            "lab_report_completed",
            "evt_4a2b8c1d-3f9e-4c0a-8b21-9d6e5f2a1c7b",
        ),
        (
            "lab_report_failed",
            "evt_7c1f0a92-52c8-4a63-9082-7e50e2f5a1cd",
        ),
    ] {
        let c = both(&fixture(name));
        assert_eq!(c.group, EventGroup::Data, "{name}");
        assert!(is_report_scoped(&c.event_type));
        assert_eq!(c.user_id, None);
        assert!(c.records.is_empty(), "report-scoped: no per-user records");
        assert_eq!(c.event_id.as_deref(), Some(event_id));
        assert_eq!(c.reference_id.as_deref(), Some("your-patient-123"));
    }
}

#[test]
fn s3_upload_is_the_s3_payload_event() {
    assert_eq!(EventGroup::of("s3_upload"), EventGroup::of("s3_payload"));
    assert_eq!(both(&fixture("s3_upload")).group, EventGroup::Misc);
}

#[test]
fn hormone_samples_are_keyed_and_started_by_their_timestamp() {
    let c = both(&fixture("hormone"));
    assert_eq!(c.user_id.as_deref(), Some(TERRA_EXAMPLE_USER));
    let got: Vec<_> = c
        .records
        .iter()
        .map(|r| (r.natural_key.as_str(), r.start_time.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "2026-05-07T08:00:00+02:00",
                Some("2026-05-07T08:00:00+02:00")
            ),
            (
                "2026-05-08T08:05:00+02:00",
                Some("2026-05-08T08:05:00+02:00")
            ),
        ]
    );
}

#[test]
fn planned_workouts_in_both_shapes() {
    // current: top-level planned_workout_id and planned_date, details.metadata
    let c = both(&fixture("planned_workout_current"));
    assert_eq!(c.records[0].natural_key, "67890");
    assert_eq!(c.records[0].start_time.as_deref(), Some("2026-07-03"));
    // older: metadata.id and metadata.planned_date
    let c = both(&fixture("planned_workout"));
    assert_eq!(c.records[0].natural_key, "pw-3310");
    assert_eq!(c.records[0].start_time.as_deref(), Some("2026-10-06"));
    // provider-side only: details.metadata
    let body = br#"{"type": "planned_workout", "user": {"user_id": "u"}, "data": [{"details": {"metadata": {"id": "g-1", "planned_date": "2026-07-04"}}}]}"#;
    let c = both(body);
    assert_eq!(c.records[0].natural_key, "g-1");
    assert_eq!(c.records[0].start_time.as_deref(), Some("2026-07-04"));
    // two on one date: two identities
    let body = br#"{"type": "planned_workout", "user": {"user_id": "u"}, "data": [{"planned_workout_id": "1", "planned_date": "2026-07-03"}, {"planned_workout_id": "2", "planned_date": "2026-07-03"}]}"#;
    let keys: Vec<_> = both(body)
        .records
        .into_iter()
        .map(|r| r.natural_key)
        .collect();
    assert_eq!(keys, ["1", "2"]);
}

#[test]
fn routes_are_keyed_by_route_id() {
    let c = both(&fixture("route"));
    assert_eq!(c.group, EventGroup::Data);
    assert_eq!(c.records[0].natural_key, "295581149349019648");
    assert_eq!(c.records[0].start_time, None);
}

#[test]
fn auth_cancelled_carries_its_reference_and_no_user() {
    let c = both(&fixture("auth_cancelled"));
    assert_eq!(c.user_id, None);
    assert_eq!(c.reference_id.as_deref(), Some("acct-2210"));
}

/// Terra's de-duplication rules per type (docs/terra-compatibility.md, identity rows).
#[test]
fn identities_follow_terras_deduplication_rules() {
    let record = |t: &str, metadata: &str| {
        let body = format!(
            r#"{{"type": "{t}", "user": {{"user_id": "u"}}, "data": [{{"metadata": {metadata}}}]}}"#
        );
        both(body.as_bytes()).records[0].natural_key.clone()
    };
    let m = r#"{"summary_id": "s-1", "start_time": "2026-10-04T07:15:00.000000+02:00"}"#;
    assert_eq!(record("activity", m), "s-1");
    assert_eq!(record("sleep", m), "s-1");
    assert_eq!(record("health_observation", m), "s-1");
    for day in ["daily", "body", "menstruation"] {
        assert_eq!(record(day, m), "2026-10-04", "{day}: the day of start_time");
    }
    assert_eq!(
        record("nutrition", m),
        "2026-10-04T07:15:00.000000+02:00",
        "nutrition: the start time"
    );
}
