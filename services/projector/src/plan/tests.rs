use terra_core::envelope::Envelope;
use terra_eventlog::{Consumed, Position, Record};

use terra_testkit::fixture;

use super::*;

fn envelope(body: &[u8], ordering: Option<i64>) -> Envelope {
    let mut envelope = terra_testkit::envelope(body, ordering, 1_780_000_000, None);
    envelope.envelope_id = "0190b2c4-0000-7000-8000-000000000001".into();
    envelope
}

fn at(offset: u64) -> Position {
    Position {
        partition: 0,
        offset,
    }
}

fn event(planned: &Planned) -> &EventPlan {
    match &planned.plan {
        Plan::Event(event) => event,
        Plan::Dead(dead) => panic!("dead: {}", dead.reason),
    }
}

#[test]
fn every_fixture_plans_without_poison() {
    let mut count = 0;
    for entry in std::fs::read_dir(terra_testkit::fixtures_dir()).unwrap() {
        let path = entry.unwrap().path();
        let body = std::fs::read(&path).unwrap();
        let planned = plan_envelope(at(0), &envelope(&body, Some(1_780_000_000_123)));
        let event = event(&planned);
        assert!(
            !event.payloads.is_empty() || path.ends_with("activity_empty_data.json"),
            "{}",
            path.display()
        );
        count += 1;
    }
    assert!(count >= 23);
}

#[test]
fn data_records_get_payload_ids_from_the_core_derivation() {
    let planned = plan_envelope(at(7), &envelope(&fixture("sleep"), Some(1_780_000_000_000)));
    let event = event(&planned);
    let classification = terra_core::classify(&fixture("sleep")).unwrap();
    assert_eq!(event.payloads.len(), classification.records.len());
    for (row, record) in event.payloads.iter().zip(&classification.records) {
        assert_eq!(row.kind, PayloadKind::Data);
        let user = classification.user_id.as_deref().unwrap();
        assert_eq!(
            row.payload_id,
            keys::data_payload_id(classification.version.as_deref(), "sleep", user, record)
        );
        assert_eq!(row.natural_key, record.natural_key);
        assert_eq!(row.version.offset, 7);
        assert_eq!(row.version.ts_ms, 1_780_000_000_000);
    }
}

#[test]
fn the_same_record_redelivered_keeps_its_identity() {
    let a = plan_envelope(at(1), &envelope(&fixture("activity"), Some(1)));
    let b = plan_envelope(at(9), &envelope(&fixture("activity"), Some(2)));
    let ids = |p: &Planned| {
        event(p)
            .payloads
            .iter()
            .map(|r| r.identity.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b));
    assert!(event(&b).payloads[0].version > event(&a).payloads[0].version);
}

#[test]
fn lifecycle_steps_per_event() {
    let reauth = plan_envelope(at(0), &envelope(&fixture("user_reauth"), None));
    let steps: Vec<_> = event(&reauth)
        .lifecycle
        .iter()
        .map(|c| (c.role, c.state))
        .collect();
    assert_eq!(
        steps,
        [
            ("old_user", Some("user_reauth")),
            ("new_user", Some("active"))
        ]
    );
    assert_eq!(
        event(&reauth).seen_users.len(),
        1,
        "only the new user is created when missing"
    );

    for (name, state) in [
        ("auth", Some("active")),
        ("auth_error_legacy", Some("auth_failed")),
        ("deauth", Some("deauth")),
        ("access_revoked", Some("access_revoked")),
        ("permission_change", None),
    ] {
        let planned = plan_envelope(at(0), &envelope(&fixture(name), None));
        let states: Vec<_> = event(&planned).lifecycle.iter().map(|c| c.state).collect();
        assert_eq!(states, [state], "{name}");
    }
    let cancelled = plan_envelope(at(0), &envelope(&fixture("auth_cancelled"), None));
    // no user: one step in the user-less history, moving nobody, with its reference
    let steps = &event(&cancelled).lifecycle;
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (
            steps[0].role,
            steps[0].user.user_id.as_str(),
            steps[0].state
        ),
        (crate::plan::NO_USER_ROLE, "", None)
    );
    assert_eq!(steps[0].user.reference_id.as_deref(), Some("acct-2210"));
    let row = &event(&cancelled).payloads[0];
    assert_eq!(row.kind, PayloadKind::Misc);
    assert!(!row.claims, "without a user the id is final");
    assert_eq!(steps[0].payload_id, row.payload_id);

    let change = plan_envelope(at(0), &envelope(&fixture("permission_change"), None));
    assert_eq!(
        event(&change).lifecycle[0].user.scopes.as_deref(),
        Some("activity:read,sleep:read,daily:read,nutrition:read")
    );
}

#[test]
fn scope_changes_add_and_remove() {
    assert_eq!(apply_scope_change("a,b,c", "d", "b"), "a,c,d");
    assert_eq!(apply_scope_change("", "a, b", ""), "a,b");
    assert_eq!(apply_scope_change("a", "", "a"), "");
    assert_eq!(apply_scope_change("a,b", "a", ""), "a,b");
}

#[test]
fn poison_is_named() {
    let not_json = plan_envelope(
        at(0),
        &Envelope {
            body_is_json: false,
            body: b"not json".to_vec().into(),
            ..Default::default()
        },
    );
    assert!(matches!(&not_json.plan, Plan::Dead(d) if d.reason.contains("not JSON")));
    assert_eq!(not_json.body.as_ref(), b"not json");

    let long_user = format!(
        r#"{{"type": "sleep", "user": {{"user_id": "{}"}}, "data": []}}"#,
        "x".repeat(10_000)
    );
    let planned = plan_envelope(at(0), &envelope(long_user.as_bytes(), None));
    assert!(
        matches!(&planned.plan, Plan::Dead(d) if d.reason.contains("user_id is 10000 characters")),
        "{:?}",
        planned.plan
    );

    let nul = br#"{"type": "auth", "status": "success", "user": {"user_id": "a\u0000b", "provider": "GARMIN"}}"#;
    let planned = plan_envelope(at(0), &envelope(nul, None));
    assert!(
        matches!(&planned.plan, Plan::Dead(d) if d.reason.contains("NUL")),
        "{:?}",
        planned.plan
    );

    let no_user = br#"{"type": "sleep", "data": [{"metadata": {"summary_id": "s"}}]}"#;
    let planned = plan_envelope(at(0), &envelope(no_user, None));
    assert!(matches!(&planned.plan, Plan::Dead(d) if d.reason.contains("without a user")));

    let garbage = Consumed {
        position: at(3),
        timestamp_ms: 5,
        record: Record {
            key: None,
            headers: vec![],
            value: bytes::Bytes::from_static(&[0xff, 0xff, 0xff]),
        },
    };
    let planned = plan(&garbage);
    assert!(
        matches!(&planned.plan, Plan::Dead(d) if d.reason.contains("not a terra.ingest.v1.Envelope"))
    );
}

#[test]
fn hostile_user_ids_stay_inside_their_key_segment() {
    let body = br#"{"type": "sleep", "user": {"user_id": "../../etc/passwd", "provider": "X"}, "data": [{"metadata": {"summary_id": "s1", "start_time": "2026-10-03T23:12:00.000000+02:00"}}], "version": "2022-03-16"}"#;
    let planned = plan_envelope(at(0), &envelope(body, None));
    let row = &event(&planned).payloads[0];
    assert_eq!(row.user_id.as_deref(), Some("../../etc/passwd"));
    assert_eq!(
        row.payload_id,
        "2022-03-16/sleep/..%2F..%2Fetc%2Fpasswd-2026-10-03T21:12:00Z".replace("..", "%2E%2E")
    );
    assert_eq!(row.payload_id.matches('/').count(), 2);
}

#[test]
fn an_envelope_deep_plan_keeps_the_envelope_and_plans_no_rows() {
    for body in [fixture("sleep"), fixture("auth"), b"not json".to_vec()] {
        let envelope = envelope(&body, Some(1_780_000_000_000));
        let full = plan_envelope(at(3), &envelope);
        let light = plan_envelope_to(at(3), &envelope, PlanDepth::Envelope);
        assert_eq!(light.envelope_id, full.envelope_id);
        assert_eq!(light.event_type, full.event_type);
        assert_eq!(light.received_at_ms, full.received_at_ms);
        assert_eq!(light.body, full.body);
        assert_eq!(light.body_sha256, full.body_sha256);
        assert_eq!(light.origin.user_id, full.origin.user_id);
        assert_eq!(light.position.offset, 3);
        match &light.plan {
            Plan::Event(event) => {
                assert!(event.payloads.is_empty() && event.lifecycle.is_empty());
                assert!(event.seen_users.is_empty());
            }
            Plan::Dead(dead) => panic!("an envelope-deep plan is never dead: {}", dead.reason),
        }
    }
    // the full plan of the same bodies does build rows (or finds the body unusable)
    let full = plan_envelope(at(0), &envelope(&fixture("sleep"), Some(1)));
    assert!(!event(&full).payloads.is_empty());
}
