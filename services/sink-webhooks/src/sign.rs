//! Signing a delivery, at send time (so a retry carries a fresh timestamp).
//!
//! **Terra** (terra-wire-format §1): `terra-signature` and `X-Terra-Signature`, both
//! `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, one `v1=` per secret
//! (two during a rotation), computed by terra-core's own [`SigningSecret::sign`].
//!
//! *Order during a rotation: the endpoint's first secret is its newest, and its `v1` comes
//! first, right after `t`.* Terra's current SDKs (`terra-python` 1.x
//! `verify_terra_webhook_signature`, the TypeScript `verifyTerraWebhookSignature`) collect
//! every `v1` and accept any match, like terra-core's verifier. Older SDKs do not:
//! `terra-api` (JS) `CheckTerraSignature` splits on `,` and reads `t` from the first element
//! and the signature from the second only, so it verifies against the first `v1`, which is
//! the newest secret's; the old `terra` Python client's `check_terra_signature` unpacks the
//! split header into exactly two values and raises on a header with two `v1` (no order can
//! help it: receivers on it must verify with a single secret, i.e. rotate receiver first,
//! then configure one secret at a time). Whitespace around a secret is not part of it (as
//! for terra-core's [`SigningSecret`]).
//!
//! **Standard Webhooks** (<https://www.standardwebhooks.com>): `webhook-id` (the envelope
//! id), `webhook-timestamp` (unix seconds) and `webhook-signature: v1,<base64
//! HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, space-separated, one per secret, in the same
//! order. The key: for a secret written `whsec_<base64>` (the Standard Webhooks form, what
//! its libraries generate and expect), the base64-decoded bytes after the prefix; for any
//! other secret, its UTF-8 bytes as written (a receiver using a Standard Webhooks library
//! then passes those bytes as the raw key, e.g. `Webhook(secret.encode())` in Python).

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use terra_core::signature::SigningSecret;

/// The Standard Webhooks secret prefix.
pub const WHSEC_PREFIX: &str = "whsec_";

/// Base64 that accepts the key with or without padding, as the Standard Webhooks libraries do.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The `terra-signature` value: `t=<timestamp>,v1=<hex>[,v1=<hex>]`, one `v1` per secret
/// in the order given (newest first). Errors name the secret by its position, never its
/// value.
pub fn terra_signature(
    secrets: &[SecretString],
    timestamp: i64,
    body: &[u8],
) -> Result<String, String> {
    if secrets.is_empty() {
        return Err("no signing secret".to_owned());
    }
    let prefix = format!("t={timestamp},");
    let mut header = format!("t={timestamp}");
    for (i, secret) in secrets.iter().enumerate() {
        let secret = SigningSecret::new(secret.expose_secret())
            .map_err(|_| format!("signing secret {} is empty", i + 1))?;
        let signed = secret.sign(timestamp, body);
        let v1 = signed
            .strip_prefix(&prefix)
            .ok_or_else(|| "terra-core's signature has an unexpected form".to_owned())?;
        header.push(',');
        header.push_str(v1);
    }
    Ok(header)
}

/// The Standard Webhooks key of a secret (see the module doc).
pub fn standard_key(secret: &SecretString) -> Result<Vec<u8>, String> {
    let secret = secret.expose_secret().trim();
    let key = match secret.strip_prefix(WHSEC_PREFIX) {
        Some(encoded) => LENIENT
            .decode(encoded)
            .map_err(|_| "is not base64 after whsec_".to_owned())?,
        None => secret.as_bytes().to_vec(),
    };
    if key.is_empty() {
        return Err("is empty".to_owned());
    }
    Ok(key)
}

/// The `webhook-signature` value: `v1,<base64>` per secret, space-separated, in order.
pub fn standard_signature(
    secrets: &[SecretString],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, String> {
    if secrets.is_empty() {
        return Err("no signing secret".to_owned());
    }
    let mut header = String::new();
    for (i, secret) in secrets.iter().enumerate() {
        let key = standard_key(secret).map_err(|why| format!("signing secret {} {why}", i + 1))?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&key).expect("hmac accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        header.push_str(&STANDARD.encode(mac.finalize().into_bytes()));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use terra_core::signature::Verifier;

    fn secrets(values: &[&str]) -> Vec<SecretString> {
        values
            .iter()
            .map(|s| SecretString::from(s.to_string()))
            .collect()
    }

    const BODY: &[u8] = br#"{"type": "auth", "status": "success"}"#;

    #[test]
    fn terra_signature_verifies_with_terra_cores_verifier_for_each_secret_of_a_rotation() {
        let header = terra_signature(&secrets(&["new-secret", "old-secret"]), 1_791_100_000, BODY)
            .expect("signed");
        for secret in ["new-secret", "old-secret"] {
            let verifier = Verifier::new(vec![SigningSecret::new(secret).unwrap()], 300);
            assert_eq!(
                verifier.verify(Some(&header), BODY, 1_791_100_010),
                Ok(1_791_100_000)
            );
        }
        let stranger = Verifier::new(vec![SigningSecret::new("other").unwrap()], 300);
        assert!(stranger.verify(Some(&header), BODY, 1_791_100_010).is_err());
        let tampered = Verifier::new(vec![SigningSecret::new("new-secret").unwrap()], 300);
        assert!(
            tampered
                .verify(Some(&header), b"{}", 1_791_100_010)
                .is_err()
        );
    }

    #[test]
    fn terra_signature_is_t_then_the_newest_secrets_v1_first() {
        let header = terra_signature(&secrets(&["new", "old"]), 42, BODY).unwrap();
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts.len(), 3, "{header}");
        assert_eq!(parts[0], "t=42");
        let new_only = SigningSecret::new("new").unwrap().sign(42, BODY);
        let old_only = SigningSecret::new("old").unwrap().sign(42, BODY);
        assert_eq!(format!("t=42,{}", parts[1]), new_only);
        assert_eq!(format!("t=42,{}", parts[2]), old_only);
        // an SDK reading only the second element (terra-api's CheckTerraSignature) gets the
        // newest secret's MAC: checked above by parts[1]
        assert_eq!(
            terra_signature(&secrets(&["new"]), 42, BODY).unwrap(),
            new_only
        );
    }

    #[test]
    fn a_known_vector_from_terras_js_sdk_tests_is_reproduced() {
        // terra-api's own unit test (a deauth payload, its secret and header)
        let body = br#"{"user": {"last_webhook_update": null, "provider": "FITBIT", "user_id": "d81ea08d-ad4d-44bd-8394-ee4b68a3f96f", "scopes": null}, "type": "deauth", "status": "success", "message": "User has deauthenticated", "version": "2022-03-16"}"#;
        let header = terra_signature(
            &secrets(&["66142e0c2960f788b19830807d4aa25cfd27a610ec65fd36"]),
            1_669_742_999,
            body,
        );
        assert_eq!(
            header.as_deref(),
            Ok("t=1669742999,v1=c885ce58891b69ab5b6c8fc7536544f4f515f2e22ec811152849295b3d995c93")
        );
    }

    #[test]
    fn empty_secrets_are_refused_by_position_without_their_value() {
        assert_eq!(
            terra_signature(&[], 1, BODY),
            Err("no signing secret".to_owned())
        );
        assert_eq!(
            terra_signature(&secrets(&["ok", "  \n"]), 1, BODY),
            Err("signing secret 2 is empty".to_owned())
        );
        assert_eq!(
            standard_signature(&[], "id", 1, BODY),
            Err("no signing secret".to_owned())
        );
        assert_eq!(
            standard_signature(&secrets(&["whsec_"]), "id", 1, BODY),
            Err("signing secret 1 is empty".to_owned())
        );
        let bad = standard_signature(&secrets(&["whsec_not*base64!supersecret"]), "id", 1, BODY);
        assert_eq!(
            bad,
            Err("signing secret 1 is not base64 after whsec_".to_owned())
        );
    }

    #[test]
    fn standard_keys_are_the_decoded_whsec_bytes_or_the_secret_as_written() {
        let whsec = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned());
        assert_eq!(
            standard_key(&whsec).unwrap(),
            STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
        );
        let unpadded = SecretString::from("whsec_YWJjZA".to_owned());
        assert_eq!(standard_key(&unpadded).unwrap(), b"abcd");
        let plain = SecretString::from("plain-secret".to_owned());
        assert_eq!(standard_key(&plain).unwrap(), b"plain-secret");
    }

    #[test]
    fn standard_signature_matches_the_specs_example() {
        // the example of the Standard Webhooks specification and its reference libraries
        let header = standard_signature(
            &secrets(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            header.as_deref(),
            Ok("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn standard_signature_has_one_entry_per_secret_space_separated() {
        let both = standard_signature(&secrets(&["whsec_YWJjZA", "x"]), "id", 7, BODY).unwrap();
        let first = standard_signature(&secrets(&["whsec_YWJjZA"]), "id", 7, BODY).unwrap();
        let second = standard_signature(&secrets(&["x"]), "id", 7, BODY).unwrap();
        assert_eq!(both, format!("{first} {second}"));
    }
}
