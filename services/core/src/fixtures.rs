//! Terra's sample webhook bodies (`tests/fixtures/webhooks`), compiled in: the bodies of
//! `terra-ingest send --fixture` and the templates of the benchmarks' load (`terra-bench`).
//! Exact bytes, as Terra sends them. Tests read the same files through `terra-testkit`.

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        /// `(name, body)` of every fixture.
        pub const ALL: &[(&str, &[u8])] = &[
            $(($name, include_bytes!(concat!("../../../tests/fixtures/webhooks/", $name, ".json")))),*
        ];
    };
}

fixtures!(
    "access_revoked",
    "activity",
    "activity_empty_data",
    "athlete",
    "auth",
    "auth_cancelled",
    "auth_error_legacy",
    "body",
    "connection_error",
    "daily",
    "deauth",
    "google_no_datasource",
    "healthcheck",
    "hormone",
    "lab_report_completed",
    "lab_report_failed",
    "large_request_processing",
    "large_request_sending",
    "menstruation",
    "nutrition",
    "permission_change",
    "planned_workout",
    "planned_workout_current",
    "rate_limit_hit",
    "route",
    "s3_payload",
    "s3_upload",
    "sleep",
    "user_reauth",
);

/// The body of fixture `name`, if there is one.
pub fn get(name: &str) -> Option<&'static [u8]> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, body)| *body)
}

/// Every fixture's name, comma separated (for error messages).
pub fn names() -> String {
    ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_fixture_on_disk_is_compiled_in() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/webhooks");
        let on_disk = std::fs::read_dir(dir).unwrap().count();
        assert_eq!(on_disk, super::ALL.len());
        assert_eq!(
            super::get("sleep"),
            Some(&std::fs::read(format!("{dir}/sleep.json")).unwrap()[..])
        );
        assert_eq!(super::get("nope"), None);
    }
}
