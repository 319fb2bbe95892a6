//! SQS pings on moto's SQS (`TERRA_TEST_S3_ENDPOINT`, S3 on the same port), read back with
//! the AWS SDK: one per stored object, each with a pre-signed URL to its exact bytes. moto
//! does not check signatures, so every URL (and forgeries of it) is also checked as S3
//! checks it, offline, by botocore (`terra_testkit::presigned`).

use std::time::Duration;

use terra_sink_objects::{ObjectSink, ObjectSinkConfig, Pinger, SqsConfig};
use terra_testkit::presigned::{param, tampered, verdicts};
use terra_testkit::{T0, fixture};

mod common;
use common::{get, log, project, record, s3, s3_endpoint};

#[tokio::test]
#[ignore = "needs an S3/SQS-compatible server: run tests/run-all.sh"]
async fn sqs_pings_carry_presigned_urls_to_the_exact_bytes_on_moto() {
    let backend = s3().await;
    let endpoint = s3_endpoint();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&shared);
    let queue = sqs
        .create_queue()
        .queue_name(format!("terra-{}", uuid::Uuid::new_v4().simple()))
        .send()
        .await
        .unwrap();
    let queue_url = queue.queue_url().unwrap().to_owned();
    let pinger = Pinger::connect(&SqsConfig {
        queue_url: queue_url.clone(),
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
    })
    .await;
    let (log, _dir) = log();
    log.append(vec![
        record(&fixture("activity"), Some(T0 * 1000)),
        record(&fixture("healthcheck"), Some(T0 * 1000)),
    ])
    .await
    .unwrap();
    let mut sink = ObjectSink::new(
        backend.store.clone(),
        ObjectSinkConfig {
            expires_in: Duration::from_secs(120),
        },
        Some(pinger),
    );
    let before = unix_now();
    let stats = project(&log, &mut sink, "objects").await;
    let signed = before..=unix_now();
    let records = terra_core::classify(&fixture("activity"))
        .unwrap()
        .records
        .len();
    assert_eq!(stats.payloads, records + 1);

    let mut messages = Vec::new();
    for _ in 0..10 {
        let got = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        messages.extend(
            got.messages()
                .iter()
                .filter_map(|m| m.body().map(str::to_owned)),
        );
        if messages.len() > records {
            break;
        }
    }
    assert_eq!(messages.len(), records + 1, "{messages:?}");
    let mut urls = Vec::new();
    for body in &messages {
        let ping: serde_json::Value = serde_json::from_str(body).unwrap();
        if ping["type"] == "healthcheck" {
            assert_eq!(
                body.as_bytes(),
                fixture("healthcheck").as_slice(),
                "the healthcheck goes as received"
            );
            continue;
        }
        assert_eq!(ping["status"], "success");
        assert_eq!(ping["type"], "s3_payload");
        assert_eq!(ping["expires_in"], 120);
        let reference = ping["payload_reference"].as_str().unwrap();
        // the URL is all the receiver needs: no credentials
        let url = ping["url"].as_str().unwrap();
        // the fixtures' keys need no escaping but for the times' colons
        let path = url.split_once('?').unwrap().0.replace("%3A", ":");
        assert!(
            path.ends_with(&format!("/{}", backend.store.key(reference))),
            "{path}"
        );
        let fetched = reqwest::get(url).await.unwrap();
        assert!(fetched.status().is_success(), "{url}: {}", fetched.status());
        let bytes = fetched.bytes().await.unwrap();
        assert_eq!(
            bytes.as_ref(),
            get(&backend.store, &backend.store.key(reference))
                .await
                .as_slice(),
            "exact bytes"
        );
        urls.push(url.to_owned());
    }
    assert_eq!(urls.len(), records);
    presigned_and_refused_when_tampered_or_expired(&urls, signed, 120);
}

/// Issue 11 §5: moto serves any URL, so each is checked as S3 would check it, and so are
/// its forgeries.
fn presigned_and_refused_when_tampered_or_expired(
    urls: &[String],
    signed: std::ops::RangeInclusive<i64>,
    expires: i64,
) {
    let now = unix_now;
    for url in urls {
        assert_eq!(
            param(url, "X-Amz-Algorithm"),
            Some("AWS4-HMAC-SHA256"),
            "{url}"
        );
        assert_eq!(
            param(url, "X-Amz-Expires"),
            Some(expires.to_string().as_str())
        );
        assert_eq!(param(url, "X-Amz-SignedHeaders"), Some("host"));
        let credential = param(url, "X-Amz-Credential").unwrap();
        assert!(
            credential.ends_with("%2Fus-east-1%2Fs3%2Faws4_request"),
            "{credential}"
        );
        let signature = param(url, "X-Amz-Signature").unwrap();
        assert!(
            signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit()),
            "{signature}"
        );
    }
    assert!(
        verdicts(now(), urls).iter().all(|v| v == "ok"),
        "{:?}",
        verdicts(now(), urls)
    );
    // signed while the batch was written, valid for `expires` seconds from then
    let before_expiry = signed.start() + expires - 1;
    let after_expiry = signed.end() + expires;
    assert!(verdicts(before_expiry, urls).iter().all(|v| v == "ok"));
    for verdict in verdicts(after_expiry, urls) {
        assert_eq!(verdict, "refused: expired");
    }
    let forged: Vec<(&str, String)> = urls.iter().flat_map(|u| tampered(u)).collect();
    let forged_urls: Vec<String> = forged.iter().map(|(_, u)| u.clone()).collect();
    for ((what, url), verdict) in forged.iter().zip(verdicts(now(), &forged_urls)) {
        assert!(
            verdict.starts_with("refused: "),
            "{what}: {verdict} for {url}"
        );
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
