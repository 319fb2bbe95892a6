//! SQS pings (terra-wire-format §8): after an object is stored, a small JSON message with a
//! pre-signed GET URL to it, or, for `healthcheck` events, the healthcheck itself. Sent with
//! the AWS SDK's SQS client (`SendMessageBatch`); the endpoint is configurable for
//! SQS-compatible servers. Needs `sqs:SendMessage` (and `sqs:GetQueueUrl` for tools).

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use sha2::{Digest, Sha256};

/// Where pings go.
#[derive(Debug, Clone, Default)]
pub struct SqsConfig {
    pub queue_url: String,
    /// An SQS-compatible endpoint instead of AWS's.
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    pub body: String,
    /// FIFO queues: ordering group (the user) and deduplication id.
    pub group: String,
    pub dedup: String,
}

impl Ping {
    /// The `s3_payload` ping for a stored object.
    pub fn s3_payload(
        url: &str,
        expires_in_secs: u64,
        payload_reference: &str,
        group: &str,
        version: &str,
    ) -> Self {
        let json = |s: &str| serde_json::to_string(s).expect("a string serialises");
        Self {
            body: format!(
                "{{\"status\": \"success\", \"type\": \"s3_payload\", \"url\": {}, \"expires_in\": {expires_in_secs}, \"payload_reference\": {}}}",
                json(url),
                json(payload_reference)
            ),
            group: group.to_owned(),
            dedup: dedup_id(&[payload_reference, version]),
        }
    }

    /// A healthcheck event, forwarded as received.
    pub fn healthcheck(body: &[u8], version: &str) -> Self {
        Self {
            body: String::from_utf8_lossy(body).into_owned(),
            group: "healthcheck".to_owned(),
            dedup: dedup_id(&["healthcheck", version]),
        }
    }
}

fn dedup_id(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..20])
}

/// A connected SQS client for one queue.
#[derive(Clone, Debug)]
pub struct Pinger {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    fifo: bool,
}

impl Pinger {
    /// Builds the client from the environment's AWS configuration (credentials chain,
    /// region), with the configured region and endpoint on top.
    pub async fn connect(config: &SqsConfig) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        Self {
            client: aws_sdk_sqs::Client::new(&shared),
            queue_url: config.queue_url.clone(),
            fifo: config.queue_url.ends_with(".fifo"),
        }
    }

    /// Sends every ping (batches of 10); an error names the first failure.
    pub async fn send(&self, pings: &[Ping]) -> Result<(), String> {
        for chunk in pings.chunks(10) {
            let mut request = self.client.send_message_batch().queue_url(&self.queue_url);
            for (i, ping) in chunk.iter().enumerate() {
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&ping.body);
                if self.fifo {
                    entry = entry
                        .message_group_id(&ping.group)
                        .message_deduplication_id(&ping.dedup);
                }
                request =
                    request.entries(entry.build().map_err(|e| format!("bad SQS message: {e}"))?);
            }
            let output = request.send().await.map_err(|e| {
                format!(
                    "SQS SendMessageBatch failed: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?;
            if let Some(failed) = output.failed().first() {
                return Err(format!(
                    "SQS refused a message: {} {}",
                    failed.code(),
                    failed.message().unwrap_or_default()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_look_like_terras() {
        let ping = Ping::s3_payload(
            "https://b.s3/k.json?X-Amz-Signature=a\"b",
            600,
            "2022-03-16/sleep/u-t",
            "u",
            "1:0:0:0",
        );
        assert_eq!(
            ping.body,
            r#"{"status": "success", "type": "s3_payload", "url": "https://b.s3/k.json?X-Amz-Signature=a\"b", "expires_in": 600, "payload_reference": "2022-03-16/sleep/u-t"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&ping.body).unwrap();
        assert_eq!(parsed["expires_in"], 600);
        assert_ne!(
            ping.dedup,
            Ping::s3_payload("x", 600, "2022-03-16/sleep/u-t", "u", "2:0:0:0").dedup
        );
        let health = Ping::healthcheck(br#"{"type": "healthcheck"}"#, "1:0:0:0");
        assert_eq!(health.body, r#"{"type": "healthcheck"}"#);
    }
}
