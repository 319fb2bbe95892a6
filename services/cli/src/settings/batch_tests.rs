//! The projectors' batch settings from the file and the flags.

use super::resolve_batches;
use super::tests::config;

#[test]
fn max_lag_comes_from_the_file_and_the_flag_wins() {
    let from_file = config("[projector]\nmax_lag = 7\n", &["standalone"]);
    assert_eq!(resolve_batches(&from_file).unwrap().max_lag, 7);
    let flag = config(
        "[projector]\nmax_lag = 7\n",
        &["standalone", "--max-lag", "0"],
    );
    assert_eq!(resolve_batches(&flag).unwrap().max_lag, 0);
}
