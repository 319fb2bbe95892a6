use proptest::prelude::*;
use serde::Deserialize;

use super::*;

const VECTORS: &str = include_str!("../../../../tests/fixtures/signature-vectors.json");

#[derive(Deserialize)]
struct Vectors {
    tolerance_seconds: u64,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    secret: Option<String>,
    secrets: Option<Vec<String>>,
    header: String,
    body: String,
    now: i64,
    expect: String,
}

#[test]
fn every_signature_vector_gives_its_expected_outcome() {
    let vectors: Vectors = serde_json::from_str(VECTORS).unwrap();
    assert!(vectors.cases.len() >= 16, "fixture lost cases");
    for case in vectors.cases {
        let secrets = case
            .secrets
            .clone()
            .unwrap_or_else(|| vec![case.secret.clone().expect("secret or secrets")]);
        let verifier = Verifier::new(
            secrets
                .into_iter()
                .map(|s| SigningSecret::new(s).unwrap())
                .collect(),
            vectors.tolerance_seconds,
        );
        let outcome = match verifier.verify(Some(&case.header), case.body.as_bytes(), case.now) {
            Ok(_) => "valid",
            Err(err) => err.code(),
        };
        assert_eq!(outcome, case.expect, "vector {}", case.name);
    }
}

#[test]
fn missing_header_and_malformed_classes() {
    let verifier = Verifier::new(vec![SigningSecret::new("s").unwrap()], 300);
    assert_eq!(
        verifier.verify(None, b"{}", 0),
        Err(SignatureError::MissingHeader)
    );
    assert!(SignatureError::NoV1Signature.is_malformed());
    assert!(!SignatureError::SignatureMismatch.is_malformed());
    assert!(!SignatureError::TimestampOutsideTolerance { tolerance_secs: 1 }.is_malformed());
}

#[test]
fn duplicate_timestamp_is_refused() {
    let secret = SigningSecret::new("s").unwrap();
    let header = secret.sign(100, b"x") + ",t=100";
    let verifier = Verifier::new(vec![secret], 300);
    assert_eq!(
        verifier.verify(Some(&header), b"x", 100),
        Err(SignatureError::BadTimestamp)
    );
}

#[test]
fn secrets_are_trimmed_and_never_printed() {
    assert_eq!(SigningSecret::new(" \n").unwrap_err(), EmptySecret);
    let secret = SigningSecret::new("whsec_hidden\n").unwrap();
    assert!(!format!("{secret:?}").contains("hidden"));
    let same = SigningSecret::new("whsec_hidden").unwrap();
    assert_eq!(secret.sign(1, b"b"), same.sign(1, b"b"));
}

#[test]
fn tolerance_is_configurable() {
    let secret = SigningSecret::new("s").unwrap();
    let header = secret.sign(1_000, b"body");
    let strict = Verifier::new(vec![secret.clone()], 10);
    assert!(strict.verify(Some(&header), b"body", 1_010).is_ok());
    assert_eq!(
        strict.verify(Some(&header), b"body", 1_011),
        Err(SignatureError::TimestampOutsideTolerance { tolerance_secs: 10 })
    );
}

proptest! {
    #[test]
    fn any_header_string_is_an_error_or_ok_never_a_panic(header in ".{0,200}", body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let verifier = Verifier::new(vec![SigningSecret::new("s").unwrap()], 300);
        let _ = verifier.verify(Some(&header), &body, 0);
    }

    #[test]
    fn structured_headers_never_panic(t in "[0-9a-z-]{0,25}", v in "[0-9a-fA-F]{0,70}", extra in "[ ,=a-z0-9]{0,30}") {
        let header = format!("t={t},v1={v},{extra}");
        let verifier = Verifier::new(vec![SigningSecret::new("s").unwrap()], 300);
        let _ = verifier.verify(Some(&header), b"{}", 0);
    }

    #[test]
    fn a_correctly_signed_body_always_verifies(
        secret in "[ -~]{1,64}".prop_filter("non-blank", |s| !s.trim().is_empty()),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        t in 0i64..4_000_000_000,
        skew in -300i64..=300,
    ) {
        let secret = SigningSecret::new(secret).unwrap();
        let header = secret.sign(t, &body);
        let verifier = Verifier::new(vec![secret], 300);
        prop_assert_eq!(verifier.verify(Some(&header), &body, t + skew), Ok(t));
    }

    #[test]
    fn any_one_byte_change_fails(
        body in proptest::collection::vec(any::<u8>(), 1..256),
        t in 1_000_000_000i64..2_000_000_000,
        target in 0usize..3,
        index in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let secret = SigningSecret::new("whsec_prop").unwrap();
        let header = secret.sign(t, &body);
        let verifier = Verifier::new(vec![secret], u64::MAX);
        let (mut header, mut body) = (header.into_bytes(), body);
        match target {
            0 => { let i = index.index(body.len()); body[i] = body[i].wrapping_add(delta); }
            1 => {
                // a digit of the timestamp, replaced by a different digit
                let digits = 2..header.iter().position(|&b| b == b',').unwrap();
                let i = digits.start + index.index(digits.len());
                header[i] = b'0' + (header[i] - b'0' + delta % 9 + 1) % 10;
            }
            _ => {
                // a hex digit of the signature, replaced by a different hex digit
                let start = header.len() - 64;
                let i = start + index.index(64);
                let hex = b"0123456789abcdef";
                let pos = hex.iter().position(|&h| h == header[i]).unwrap();
                header[i] = hex[(pos + 1 + usize::from(delta) % 15) % 16];
            }
        }
        let header = String::from_utf8(header).unwrap();
        prop_assert!(verifier.verify(Some(&header), &body, t).is_err());
    }
}

#[test]
fn verify_any_finds_the_valid_value_among_malformed_and_stale_ones() {
    let secret = SigningSecret::new("whsec_any").unwrap();
    let verifier = Verifier::new(vec![secret.clone()], 300);
    let body = br#"{"type":"sleep"}"#;
    let good = secret.sign(1_800_000_000, body);
    let stale = secret.sign(1_700_000_000, body);
    let other = SigningSecret::new("whsec_other")
        .unwrap()
        .sign(1_800_000_000, body);
    let now = 1_800_000_010;
    // whichever position the valid value takes
    for headers in [
        vec!["garbage", good.as_str()],
        vec![good.as_str(), "garbage"],
        vec![
            "t=1800000000",
            stale.as_str(),
            other.as_str(),
            good.as_str(),
        ],
    ] {
        assert_eq!(verifier.verify_any(headers, body, now), Ok(1_800_000_000));
    }
    // none valid: a well-formed refusal (401) wins over a malformed one (400)
    assert_eq!(
        verifier.verify_any(["garbage", other.as_str()], body, now),
        Err(SignatureError::SignatureMismatch)
    );
    assert_eq!(
        verifier.verify_any([stale.as_str(), "t=1"], body, now),
        Err(SignatureError::TimestampOutsideTolerance {
            tolerance_secs: 300
        })
    );
    assert_eq!(
        verifier.verify_any(["v1=00"], body, now),
        Err(SignatureError::NoTimestamp)
    );
    assert_eq!(
        verifier.verify_any(std::iter::empty(), body, now),
        Err(SignatureError::MissingHeader)
    );
    // a bounded number of values, so one request cannot buy unbounded HMAC work
    let many = vec!["garbage"; MAX_SIGNATURE_HEADERS + 1];
    let err = verifier.verify_any(many, body, now).unwrap_err();
    assert_eq!(err.code(), "too_many_signatures");
    assert!(err.is_malformed());
}
