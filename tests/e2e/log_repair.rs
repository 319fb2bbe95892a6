//! A damaged embedded log, as an operator meets it: `standalone` refuses to start, naming the
//! byte and the repair command; `terra-ingest log repair` keeps every intact record at its
//! offset; `standalone` starts again and takes new webhooks after them.

use super::{read_envelopes, start, terminate, terra_ingest, text};

fn send(cwd: &std::path::Path, url: &str, fixture: &str) {
    let out = terra_ingest(cwd, &["send", "--url", url, "--fixture", fixture]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test]
async fn a_damaged_log_is_refused_at_start_then_repaired_by_the_log_repair_command() {
    let cwd = tempfile::tempdir().unwrap();
    let args = ["standalone", "--grpc-addr", "127.0.0.1:0"];
    let mut server = start(cwd.path(), &args);
    let url = format!("http://{}/webhook", server.addr);
    let fixtures = [
        "activity",
        "sleep",
        "daily",
        "body",
        "auth",
        "deauth",
        "nutrition",
        "athlete",
    ];
    for fixture in fixtures {
        send(cwd.path(), &url, fixture);
    }
    assert!(terminate(&mut server).success());
    let log = cwd.path().join("data/log");
    let before = read_envelopes(&log).await;
    assert_eq!(before.len(), fixtures.len());

    // one byte flipped in the middle of the segment: acknowledged records follow it
    let segment = log.join("segments/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    let refused = terra_ingest(
        cwd.path(),
        &[
            "standalone",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ],
    );
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("is damaged at byte"), "{stderr}");
    assert!(stderr.contains("log repair"), "{stderr}");
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "the damaged file was changed"
    );

    let repaired = terra_ingest(cwd.path(), &["log", "repair"]);
    let stdout = text(&repaired.stdout);
    assert!(
        repaired.status.success(),
        "{stdout}{}",
        text(&repaired.stderr)
    );
    assert!(
        stdout.contains(&format!("kept {} intact record", fixtures.len() - 1)),
        "{stdout}"
    );
    assert!(stdout.contains("hold no intact record"), "{stdout}");
    let after = read_envelopes(&log).await;
    assert_eq!(after.len(), fixtures.len() - 1);
    for envelope in &after {
        assert!(before.contains(envelope), "{envelope:?} changed");
    }

    let mut server = start(cwd.path(), &args);
    let url = format!("http://{}/webhook", server.addr);
    send(cwd.path(), &url, "menstruation");
    assert!(terminate(&mut server).success());
    assert_eq!(read_envelopes(&log).await.len(), fixtures.len());
}

#[test]
fn log_repair_names_what_it_cannot_work_on() {
    let cwd = tempfile::tempdir().unwrap();
    let out = terra_ingest(cwd.path(), &["log", "repair", "--log", "kafka-mock://t"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("works on an embedded log"),
        "{}",
        text(&out.stderr)
    );
    let out = terra_ingest(cwd.path(), &["log", "repair", "--data-dir", "nowhere"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("holds no embedded log"),
        "{}",
        text(&out.stderr)
    );
}
