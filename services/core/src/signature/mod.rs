//! `terra-signature` verification (terra-wire-format §1): parse the header, recompute
//! HMAC-SHA256 over `t + "." + raw body` with each active secret, compare in constant time
//! against every `v1` entry, and enforce the replay window.

use std::fmt;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Header names Terra uses, in lookup order (newer deliveries send both).
pub const HEADER_NAMES: [&str; 2] = ["x-terra-signature", "terra-signature"];

/// Default replay window.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// Most signature header values [`Verifier::verify_any`] tries; more are refused, so a
/// request cannot make the ingress compute an HMAC over its body once per header.
pub const MAX_SIGNATURE_HEADERS: usize = 8;

/// Why a delivery did not verify. The `code()` strings are stable and appear in HTTP
/// responses and metrics; they never contain the header, the body or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no terra-signature header")]
    MissingHeader,
    #[error("terra-signature header has no t= timestamp")]
    NoTimestamp,
    #[error("terra-signature header has a t= value that is not a unix timestamp")]
    BadTimestamp,
    #[error("terra-signature header has no v1= signature")]
    NoV1Signature,
    #[error("terra-signature timestamp is outside the {tolerance_secs} s tolerance")]
    TimestampOutsideTolerance { tolerance_secs: u64 },
    #[error("terra-signature does not match the body with any active secret")]
    SignatureMismatch,
    #[error("more than {max} terra-signature headers")]
    TooManyHeaders { max: usize },
}

impl SignatureError {
    /// Stable machine-readable code (the outcome names of the signature test vectors).
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_signature",
            Self::NoTimestamp => "no_timestamp",
            Self::BadTimestamp => "bad_timestamp",
            Self::NoV1Signature => "no_v1_signature",
            Self::TimestampOutsideTolerance { .. } => "timestamp_outside_tolerance",
            Self::SignatureMismatch => "signature_mismatch",
            Self::TooManyHeaders { .. } => "too_many_signatures",
        }
    }

    /// True for a header that is absent or malformed (the client's request is broken: 400),
    /// false for one that is well formed but does not authenticate (401).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Self::MissingHeader
                | Self::NoTimestamp
                | Self::BadTimestamp
                | Self::NoV1Signature
                | Self::TooManyHeaders { .. }
        )
    }
}

/// A parsed `terra-signature` header: the `t` value exactly as sent and every `v1` entry.
/// Other schemes (`v0`, ...) are ignored so they can never downgrade verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    timestamp_text: &'a str,
    timestamp: i64,
    /// Decoded `v1` MACs; `None` for an entry that is not 64 hex digits (it can never match,
    /// but it still counts as a v1 entry).
    v1: Vec<Option<[u8; 32]>>,
}

impl<'a> SignatureHeader<'a> {
    /// Parses a header value such as `t=1791100000, v1=8aec…, v0=…`.
    pub fn parse(value: &'a str) -> Result<Self, SignatureError> {
        let mut timestamp_text = None;
        let mut v1 = Vec::new();
        for element in value.split(',') {
            let element = element.trim_matches(|c| c == ' ' || c == '\t');
            let Some((scheme, item)) = element.split_once('=') else {
                continue;
            };
            match scheme {
                // A second `t` makes the signed string ambiguous: refuse rather than guess.
                "t" if timestamp_text.is_some() => return Err(SignatureError::BadTimestamp),
                "t" => timestamp_text = Some(item),
                "v1" => v1.push(decode_mac(item)),
                _ => {}
            }
        }
        let timestamp_text = timestamp_text.ok_or(SignatureError::NoTimestamp)?;
        let timestamp = parse_unix_seconds(timestamp_text).ok_or(SignatureError::BadTimestamp)?;
        if v1.is_empty() {
            return Err(SignatureError::NoV1Signature);
        }
        Ok(Self {
            timestamp_text,
            timestamp,
            v1,
        })
    }

    /// The `t` value as unix seconds.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }
}

fn parse_unix_seconds(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn decode_mac(hex_text: &str) -> Option<[u8; 32]> {
    let mut mac = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut mac).ok()?;
    Some(mac)
}

/// A webhook signing secret. Never printed: `Debug` shows a placeholder.
#[derive(Clone)]
pub struct SigningSecret(SecretString);

impl SigningSecret {
    /// Wraps a secret; surrounding whitespace (a trailing newline in a secret file) is
    /// removed. Errors when nothing is left.
    pub fn new(secret: impl Into<String>) -> Result<Self, EmptySecret> {
        let secret: String = secret.into();
        let trimmed = secret.trim();
        if trimmed.is_empty() {
            return Err(EmptySecret);
        }
        Ok(Self(SecretString::from(trimmed.to_owned())))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(self.0.expose_secret().as_bytes())
            .expect("hmac accepts keys of any length")
    }

    /// Signs `body` at `timestamp` the way Terra does and returns the header value
    /// `t=<timestamp>,v1=<hex>`.
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let mac = compute_mac(self, &timestamp.to_string(), body);
        format!("t={timestamp},v1={}", hex::encode(mac))
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

/// An empty signing secret was configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signing secret is empty")]
pub struct EmptySecret;

fn compute_mac(secret: &SigningSecret, timestamp_text: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = secret.mac();
    mac.update(timestamp_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Verifies deliveries of one source: its active secrets (several during rotation) and
/// its replay window.
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: Vec<SigningSecret>,
    tolerance_secs: u64,
}

impl Verifier {
    pub fn new(secrets: Vec<SigningSecret>, tolerance_secs: u64) -> Self {
        Self {
            secrets,
            tolerance_secs,
        }
    }

    pub fn tolerance_secs(&self) -> u64 {
        self.tolerance_secs
    }

    /// Verifies a raw header value against the exact body bytes at clock `now` (unix
    /// seconds). Returns the signature timestamp when valid.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<i64, SignatureError> {
        let header = SignatureHeader::parse(header.ok_or(SignatureError::MissingHeader)?)?;
        let mut matched = subtle::Choice::from(0);
        for secret in &self.secrets {
            let expected = compute_mac(secret, header.timestamp_text, body);
            for candidate in header.v1.iter().flatten() {
                matched |= expected.ct_eq(candidate);
            }
        }
        if !bool::from(matched) {
            return Err(SignatureError::SignatureMismatch);
        }
        if now.abs_diff(header.timestamp) > self.tolerance_secs {
            return Err(SignatureError::TimestampOutsideTolerance {
                tolerance_secs: self.tolerance_secs,
            });
        }
        Ok(header.timestamp)
    }

    /// Verifies every header value a delivery carried (`X-Terra-Signature` and
    /// `terra-signature`, each possibly repeated) and accepts the delivery when any one of
    /// them is valid, so a malformed or stale value cannot hide a valid one. When none is
    /// valid, the most telling refusal is returned: a value that was well formed but did
    /// not authenticate (401) before one that was malformed (400).
    pub fn verify_any<'a>(
        &self,
        headers: impl IntoIterator<Item = &'a str>,
        body: &[u8],
        now: i64,
    ) -> Result<i64, SignatureError> {
        let mut refusal: Option<SignatureError> = None;
        for (tried, header) in headers.into_iter().enumerate() {
            if tried == MAX_SIGNATURE_HEADERS {
                return Err(SignatureError::TooManyHeaders {
                    max: MAX_SIGNATURE_HEADERS,
                });
            }
            match self.verify(Some(header), body, now) {
                Ok(timestamp) => return Ok(timestamp),
                Err(err) => {
                    let better = match &refusal {
                        None => true,
                        Some(previous) => previous.is_malformed() && !err.is_malformed(),
                    };
                    if better {
                        refusal = Some(err);
                    }
                }
            }
        }
        Err(refusal.unwrap_or(SignatureError::MissingHeader))
    }
}

#[cfg(test)]
mod tests;
