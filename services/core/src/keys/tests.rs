use proptest::prelude::*;

use super::*;
use crate::classify;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../tests/fixtures/webhooks/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn data_record_ids_follow_terras_layout() {
    let c = classify(&fixture("sleep")).unwrap();
    let id = data_payload_id(
        c.version.as_deref(),
        &c.event_type,
        c.user_id.as_deref().unwrap(),
        &c.records[0],
    );
    // terra-wire-format §7: start time converted to UTC, whole seconds
    assert_eq!(
        id,
        "2022-03-16/sleep/0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3-2026-10-03T21:12:00Z"
    );
    assert_eq!(object_key("", &id), format!("{id}.json"));
    assert_eq!(object_key("/terra/", &id), format!("terra/{id}.json"));
}

#[test]
fn records_without_a_start_time_use_their_natural_key() {
    let c = classify(&fixture("athlete")).unwrap();
    let id = data_payload_id(
        c.version.as_deref(),
        "athlete",
        c.user_id.as_deref().unwrap(),
        &c.records[0],
    );
    assert_eq!(
        id,
        "2022-03-16/athlete/0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3-athlete"
    );
    let c = classify(&fixture("planned_workout")).unwrap();
    let id = data_payload_id(c.version.as_deref(), "planned_workout", "u", &c.records[0]);
    assert_eq!(id, "2022-03-16/planned_workout/u-2026-10-06");
}

/// Terra's bucket examples: `<version>/auth/<user>-2026-03-12T14:30:00Z.json`, the
/// generation time to the second with `Z` (issue 14 §2).
#[test]
fn event_ids_use_generation_time_to_the_second_and_default_version() {
    assert_eq!(
        event_payload_id(None, "auth", Some("u-1"), 1_773_325_800_999),
        "2022-03-16/auth/u-1-2026-03-12T14:30:00Z"
    );
    assert_eq!(
        event_payload_id(Some("2022-03-16"), "healthcheck", None, 0),
        "2022-03-16/healthcheck/1970-01-01T00:00:00Z"
    );
    assert_eq!(
        event_payload_id(None, "", None, 0),
        "2022-03-16/unknown/1970-01-01T00:00:00Z"
    );
    assert_eq!(
        object_key(
            "",
            &event_payload_id(None, "auth", Some("u-1"), 1_773_325_800_000)
        ),
        "2022-03-16/auth/u-1-2026-03-12T14:30:00Z.json"
    );
}

#[test]
fn dotted_types_keep_their_name_and_hostile_ones_are_encoded() {
    assert_eq!(
        event_payload_id(None, "lab_report.completed", None, 0),
        "2022-03-16/lab_report.completed/1970-01-01T00:00:00Z"
    );
    for hostile in ["..", ".", "a..b", ".a", "a.", "A.b", "a/b.c"] {
        let id = event_payload_id(None, hostile, None, 0);
        assert!(!id.split('/').any(|s| s == "." || s == ".."), "{id}");
        assert_eq!(id.split('/').count(), 3, "{id}");
        assert!(
            !id.split('/').nth(1).unwrap().contains('.'),
            "{hostile} -> {id}"
        );
    }
}

#[test]
fn suffixes_keep_the_base_and_tell_identities_apart() {
    let base = event_payload_id(None, "auth", Some("u-1"), 1_773_325_800_000);
    let a = with_suffix(&base, &"ab".repeat(32));
    let b = with_suffix(&base, &"cd".repeat(32));
    assert_eq!(a, format!("{base}~abababababab"));
    assert_ne!(a, b);
    assert_ne!(a, base);
    // the longest base id still fits with its suffix
    let long = data_payload_id(
        Some(&"v".repeat(500)),
        &"t".repeat(500),
        &"\u{1F600}".repeat(100),
        &crate::DataRecord {
            index: 0,
            natural_key: "k".repeat(500),
            start_time: Some("x".repeat(500)),
            end_time: None,
        },
    );
    assert!(with_suffix(&long, &"0".repeat(64)).len() <= MAX_PAYLOAD_ID_LEN);
}

#[test]
fn utc_conversion() {
    assert_eq!(
        iso_to_utc_seconds("2026-10-04T00:00:00.000000+02:00").as_deref(),
        Some("2026-10-03T22:00:00Z")
    );
    assert_eq!(
        iso_to_utc_seconds("2026-10-04T07:15:00-05:30").as_deref(),
        Some("2026-10-04T12:45:00Z")
    );
    assert_eq!(
        iso_to_utc_seconds("2024-02-29T23:59:59Z").as_deref(),
        Some("2024-02-29T23:59:59Z")
    );
    assert_eq!(iso_to_utc_seconds("2026-10-04"), None);
    assert_eq!(iso_to_utc_seconds("2026-10-04T07:15:00"), None);
    assert_eq!(iso_to_utc_seconds("2026-13-04T07:15:00Z"), None);
}

#[test]
fn hostile_user_ids_stay_inside_their_folder() {
    let long = "a/".repeat(5_000);
    for hostile in [
        "../../etc/passwd",
        "/",
        "..",
        "a\0b",
        "\u{fffd}\u{202e}",
        "",
        " ",
        "%2F",
        long.as_str(),
    ] {
        let id = event_payload_id(None, "auth", Some(hostile), 0);
        let segments: Vec<_> = id.split('/').collect();
        assert_eq!(segments.len(), 3, "{hostile:?} -> {id}");
        assert!(
            !segments
                .iter()
                .any(|s| s.is_empty() || *s == "." || *s == ".."),
            "{id}"
        );
        assert!(id.len() <= MAX_PAYLOAD_ID_LEN, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_graphic()), "{id}");
    }
}

#[test]
fn encoding_is_injective_on_tricky_pairs() {
    let pairs = [
        ("a/b", "a%2Fb"),
        ("a b", "a+b"),
        ("x", "x~"),
        ("", "~empty"),
    ];
    for (a, b) in pairs {
        assert_ne!(
            encode_segment(a, 100),
            encode_segment(b, 100),
            "{a:?} vs {b:?}"
        );
    }
    let long_a = "é".repeat(200);
    let long_b = format!("{}x", "é".repeat(199));
    assert_ne!(encode_segment(&long_a, 100), encode_segment(&long_b, 100));
}

proptest! {
    #[test]
    fn any_user_id_gives_a_bounded_single_segment(user in "\\PC{0,3000}", t in any::<i64>()) {
        let segment = encode_segment(&user, MAX_USER_SEGMENT);
        prop_assert!(!segment.is_empty() && segment.len() <= MAX_USER_SEGMENT);
        prop_assert!(segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_%~".contains(&b)));
        let id = event_payload_id(Some(&user), &user, Some(&user), t / 4);
        prop_assert_eq!(id.split('/').count(), 3);
        prop_assert!(id.len() <= MAX_PAYLOAD_ID_LEN);
    }

    #[test]
    fn encoding_is_injective(a in "\\PC{0,300}", b in "\\PC{0,300}") {
        prop_assume!(a != b);
        prop_assert_ne!(encode_segment(&a, MAX_USER_SEGMENT), encode_segment(&b, MAX_USER_SEGMENT));
    }

    #[test]
    fn data_ids_are_bounded_for_any_start_time(start in "\\PC{0,500}", user in "\\PC{0,500}") {
        let record = DataRecord { index: 0, natural_key: start.clone(), start_time: Some(start), end_time: None };
        let id = data_payload_id(None, "sleep", &user, &record);
        prop_assert_eq!(id.split('/').count(), 3);
        prop_assert!(id.len() <= MAX_PAYLOAD_ID_LEN);
    }
}
