//! Fuzzing in the test suite: proptest runs of the header parser and verifier (`headers`)
//! and of the classifier's two paths (`bodies`) on structured inputs that get past the first
//! byte (header grammars with mutations; Terra's fixture bodies with mutated fields), the
//! equivalent of a bounded run of the cargo-fuzz targets in `services/core/fuzz` on every
//! change. 100,000 cases each by default; `PROPTEST_CASES` sets another count. Each test
//! prints what it ran (nextest shows it: `.config/nextest.toml`).

mod bodies;
mod headers;

use std::time::Instant;

use proptest::test_runner::{Config, TestRunner};

/// Cases per fuzz test when `PROPTEST_CASES` does not say.
pub(crate) const DEFAULT_CASES: u32 = 100_000;

/// The runner every fuzz test uses: `PROPTEST_CASES` cases (default 100,000), no failure
/// files (a failure prints its minimal input), a fixed seed only when `PROPTEST_RNG_SEED` says.
pub(crate) fn runner() -> (TestRunner, u32) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    (TestRunner::new(config), cases)
}

/// Prints one fuzz run's numbers.
pub(crate) fn report(name: &str, executions: u64, started: Instant, details: &str) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz {name}: {executions} executions in {secs:.1} s ({:.0}/s); {details}",
        executions as f64 / secs.max(1e-9)
    );
}

/// `part` of `whole` in percent.
pub(crate) fn percent(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}
