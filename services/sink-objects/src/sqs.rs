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
    /// FIFO queues: ordering group (the user's, see [`fifo_group`]) and deduplication id.
    pub group: String,
    pub dedup: String,
}

impl Ping {
    /// The `s3_payload` ping for a stored object, with the fields of Terra's SQS messages:
    /// `status`, `type`, `url`, `expires_in`, `payload_reference` (here the payload id: the
    /// object key stem, the SQL row's `payload_id` and what `GetPayload` takes), `user_id`
    /// and `reference_id` (`null` when the event has none), in Terra's `", "` / `": "` style.
    pub fn s3_payload(
        url: &str,
        expires_in_secs: u64,
        payload_reference: &str,
        user_id: Option<&str>,
        reference_id: Option<&str>,
        group: &str,
        version: &str,
    ) -> Self {
        let json = |s: &str| serde_json::to_string(s).expect("a string serialises");
        let nullable = |s: Option<&str>| s.map_or_else(|| "null".to_owned(), json);
        Self {
            body: format!(
                "{{\"status\": \"success\", \"type\": \"s3_payload\", \"url\": {}, \"expires_in\": {expires_in_secs}, \"payload_reference\": {}, \"user_id\": {}, \"reference_id\": {}}}",
                json(url),
                json(payload_reference),
                nullable(user_id),
                nullable(reference_id)
            ),
            group: fifo_group(group),
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

/// The FIFO group of a user: the hex SHA-256 of the user id (64 characters). SQS takes at
/// most 128 characters of ASCII letters, digits and punctuation; `user_id` is untrusted text
/// (any length, spaces, any Unicode), and a group id SQS refuses would fail every ping of that
/// batch again and again. One user keeps one group, so its pings stay in order.
pub fn fifo_group(user: &str) -> String {
    hex::encode(Sha256::digest(user.as_bytes()))
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
            Some("u"),
            Some("acct-\"1"),
            "u",
            "1:0:0:0",
        );
        // Terra's SQS message fields (docs/terra-compatibility.md, queue rows)
        assert_eq!(
            ping.body,
            r#"{"status": "success", "type": "s3_payload", "url": "https://b.s3/k.json?X-Amz-Signature=a\"b", "expires_in": 600, "payload_reference": "2022-03-16/sleep/u-t", "user_id": "u", "reference_id": "acct-\"1"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&ping.body).unwrap();
        assert_eq!(parsed["expires_in"], 600);
        assert_ne!(
            ping.dedup,
            Ping::s3_payload("x", 600, "2022-03-16/sleep/u-t", None, None, "u", "2:0:0:0").dedup
        );
        let userless = Ping::s3_payload("x", 600, "k", None, None, "healthcheck", "1:0:0:0");
        let parsed: serde_json::Value = serde_json::from_str(&userless.body).unwrap();
        assert!(parsed["user_id"].is_null() && parsed["reference_id"].is_null());
        let health = Ping::healthcheck(br#"{"type": "healthcheck"}"#, "1:0:0:0");
        assert_eq!(health.body, r#"{"type": "healthcheck"}"#);
    }

    /// Issue 11 §4: a hostile user id cannot stall the pings: every group id is one SQS
    /// takes (1-128 ASCII letters, digits, punctuation), one per user.
    #[test]
    fn fifo_groups_are_valid_for_any_user_id() {
        let valid =
            |g: &str| !g.is_empty() && g.len() <= 128 && g.bytes().all(|b| b.is_ascii_graphic());
        let hostile = [
            "8b2c7e4e-1c0a-4c55-9a55-0c1d1e6f2a10".to_owned(),
            "x".repeat(200),
            "user with spaces".to_owned(),
            "ユーザー🙂".to_owned(),
            "tab\tand\nnewline".to_owned(),
            String::new(),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for user in &hostile {
            let ping = Ping::s3_payload("u", 600, "k", Some(user), None, user, "1:0:0:0");
            assert!(valid(&ping.group), "{user:?} -> {:?}", ping.group);
            assert_eq!(ping.group, fifo_group(user), "one group per user");
            seen.insert(ping.group);
        }
        assert_eq!(seen.len(), hostile.len(), "distinct users, distinct groups");
    }
}
