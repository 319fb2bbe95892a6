//! `standalone` writing Terra's bucket layout to a real S3-compatible server (moto, started by
//! tests/run-all.sh) with SQS pings, checked with an off-the-shelf client: boto3 lists the
//! bucket, reads exactly one ping per object off the queue and downloads every pre-signed
//! URL; botocore checks each URL's signature and expiry (`terra_testkit::presigned`).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{start, terminate, terra_ingest, text};

fn python() -> String {
    std::env::var("TERRA_TEST_PYTHON")
        .expect("TERRA_TEST_PYTHON (a python with boto3; tests/run-all.sh sets it; tests that need it have `moto` in their names)")
}

fn boto(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 script failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

const SETUP: &str = r#"
import boto3, sys
endpoint, bucket, queue = sys.argv[1], sys.argv[2], sys.argv[3]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
boto3.client("s3", **kw).create_bucket(Bucket=bucket)
print(boto3.client("sqs", **kw).create_queue(QueueName=queue)["QueueUrl"])
"#;

const LIST: &str = r#"
import boto3, json, sys
endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
print(json.dumps(sorted(o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", []))))
"#;

const CHECK: &str = r#"
import boto3, json, sys, time, urllib.request
endpoint, bucket, queue_url, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
s3, sqs = boto3.client("s3", **kw), boto3.client("sqs", **kw)
keys = sorted(o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", []))
pings, downloads_match = [], True
# every expected ping, then 2 s more for any extra one (received pings stay hidden meanwhile)
deadline = time.time() + 30
while time.time() < deadline:
    got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1 if len(pings) < expected else 2).get("Messages", [])
    if not got and len(pings) >= expected:
        break
    for m in got:
        ping = json.loads(m["Body"])
        pings.append({"type": ping["type"], "reference": ping.get("payload_reference"), "url": ping.get("url")})
        if ping["type"] == "s3_payload":
            fetched = urllib.request.urlopen(ping["url"]).read()
            stored = s3.get_object(Bucket=bucket, Key=ping["payload_reference"] + ".json")["Body"].read()
            downloads_match = downloads_match and fetched == stored
print(json.dumps({"keys": keys, "pings": pings, "downloads_match": downloads_match}))
"#;

#[tokio::test]
#[ignore = "needs an S3/SQS-compatible server and boto3: run tests/run-all.sh"]
async fn standalone_writes_terras_bucket_layout_on_moto_listed_by_boto3() {
    let endpoint = std::env::var("TERRA_TEST_S3_ENDPOINT").expect(
        "TERRA_TEST_S3_ENDPOINT (tests/run-all.sh sets it; tests that need it have `moto` in their names)",
    );
    let bucket = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    let queue_url = boto(SETUP, &[&endpoint, &bucket, &bucket])
        .trim()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let objects = format!("s3://{bucket}");
    let mut server = start(
        dir.path(),
        &[
            "standalone",
            // not the default gRPC port: the zero-config test has it, in parallel
            "--grpc-addr",
            "127.0.0.1:0",
            "--objects",
            &objects,
            "--s3-endpoint",
            &endpoint,
            "--s3-path-style",
            "--s3-allow-http",
            "--sqs-queue-url",
            &queue_url,
            "--sqs-endpoint",
            &endpoint,
            "--batch-wait-ms",
            "5",
        ],
    );
    let webhook = format!("http://{}/webhook", server.addr);
    let mut expected = BTreeSet::new();
    let names = [
        "sleep",
        "activity",
        "daily",
        "athlete",
        "planned_workout",
        "deauth",
        "healthcheck",
    ];
    for name in names {
        let ordering = "X-Terra-Ordering-Timestamp: 1780000000000";
        let out = terra_ingest(
            dir.path(),
            &["send", "--url", &webhook, "--fixture", name, "-H", ordering],
        );
        assert!(
            text(&out.stdout).starts_with("200"),
            "{name}: {}",
            text(&out.stdout)
        );
        let body =
            std::fs::read(format!("{}/webhooks/{name}.json", super::fixtures_dir())).unwrap();
        // the payload ids (events without a user carry their suffix), sent at the same
        // ordering timestamp as the query test's
        for id in super::query::expected(&body).0 {
            expected.insert(terra_core::keys::object_key("", &id));
        }
    }
    // wait until the projector has written everything
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed: Vec<String> = serde_json::from_str(&boto(LIST, &[&endpoint, &bucket])).unwrap();
        let listed = listed.iter().filter(|k| !k.starts_with("_claims/")).count();
        if listed >= expected.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report: serde_json::Value = serde_json::from_str(&boto(
        CHECK,
        &[&endpoint, &bucket, &queue_url, &expected.len().to_string()],
    ))
    .unwrap();
    let listed: BTreeSet<String> = report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .filter(|k| !k.starts_with("_claims/"))
        .collect();
    assert_eq!(listed, expected, "the bucket holds exactly Terra's layout");
    assert!(
        report["downloads_match"].as_bool().unwrap(),
        "every pre-signed URL gives the stored bytes"
    );
    // exactly one ping per object: the healthcheck as received, an s3_payload for the rest
    let pings = report["pings"].as_array().unwrap();
    let healthchecks = pings.iter().filter(|p| p["type"] == "healthcheck").count();
    let referenced: Vec<String> = pings
        .iter()
        .filter(|p| p["type"] == "s3_payload")
        .map(|p| format!("{}.json", p["reference"].as_str().unwrap()))
        .collect();
    let expected_references: BTreeSet<String> = expected
        .iter()
        .filter(|k| !k.contains("/healthcheck/"))
        .cloned()
        .collect();
    assert_eq!(healthchecks, 1, "{pings:?}");
    assert_eq!(
        referenced.len(),
        expected_references.len(),
        "one s3_payload ping per object, no more: {pings:?}"
    );
    assert_eq!(
        referenced.into_iter().collect::<BTreeSet<_>>(),
        expected_references
    );
    assert_eq!(pings.len(), expected.len(), "{pings:?}");
    // each URL is pre-signed as S3 checks it (moto does not), and a forged one is not
    let urls: Vec<String> = pings
        .iter()
        .filter_map(|p| p["url"].as_str().map(str::to_owned))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let verdicts = terra_testkit::presigned::verdicts(now, &urls);
    assert!(verdicts.iter().all(|v| v == "ok"), "{verdicts:?}");
    let forged: Vec<String> = terra_testkit::presigned::tampered(&urls[0])
        .into_iter()
        .map(|(_, u)| u)
        .collect();
    let verdicts = terra_testkit::presigned::verdicts(now, &forged);
    assert!(
        verdicts.iter().all(|v| v.starts_with("refused: ")),
        "{verdicts:?}"
    );
    // the default lifetime: 600 s
    let expired = terra_testkit::presigned::verdicts(now + 601, &urls[..1]);
    assert_eq!(expired, ["refused: expired"]);
    assert!(terminate(&mut server).success());
}
