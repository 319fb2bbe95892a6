//! `terra-signature` headers from their grammar (`t=…,v1=…` elements) with mutations: extra
//! spaces and tabs, repeated keys, unknown and look-alike schemes, huge and signed numbers,
//! non-hex and mis-sized MACs, several `v1`, one nibble changed, elements without `=`. Every
//! value is verified by the real `Verifier` and by a reference written from the rules
//! (terra-wire-format §1) with its own HMAC computation; they must give the same answer.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use hmac::{Hmac, Mac};
use proptest::prelude::*;
use sha2::Sha256;

use crate::signature::{SignatureError, SignatureHeader, SigningSecret, Verifier};

const NOW: i64 = 1_791_100_000;

#[derive(Debug, Clone)]
enum Piece {
    /// `t=<text>`.
    Timestamp(String),
    /// `v1=` with the MAC of the header's first `t` text and the body under secret number
    /// `secret` (one past the configured ones: a secret the verifier does not have),
    /// upper-cased or with one nibble changed.
    GoodMac {
        secret: usize,
        upper: bool,
        flip: Option<usize>,
    },
    /// `<scheme>=<value>` with any other text (v1 with junk, v0, V1, x, …).
    Other(String, String),
    /// Text without `=`.
    Bare(String),
}

#[derive(Debug, Clone)]
struct Case {
    pieces: Vec<(String, Piece, String)>,
    /// Separator after each piece (`,`, `,,`, `, `, `;`).
    separators: Vec<String>,
    secrets: Vec<String>,
    body: Vec<u8>,
    tolerance: u64,
}

fn timestamp_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (-400i64..400).prop_map(|d| (NOW + d).to_string()),
        1 => (-100_000i64..100_000).prop_map(|d| (NOW + d).to_string()),
        1 => "[0-9]{0,25}",
        1 => "-[0-9]{1,12}",
        1 => "\\+[0-9]{10}",
        1 => "0{1,8}[0-9]{10}",
        1 => "[0-9]{5} [0-9]{5}",
        1 => "[0-9a-fx.e]{1,14}",
        1 => Just("9223372036854775807".to_owned()),
        1 => Just("99999999999999999999999".to_owned()),
        1 => Just("١٧٩١١٠٠٠٠٠".to_owned()),
        1 => "\\PC{0,8}",
    ]
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        3 => timestamp_text().prop_map(Piece::Timestamp),
        4 => (0usize..4, any::<bool>(), prop::option::weighted(0.2, 0usize..64))
            .prop_map(|(secret, upper, flip)| Piece::GoodMac { secret, upper, flip }),
        2 => (
            prop_oneof![
                Just("v1"), Just("v0"), Just("V1"), Just("v2"), Just("T"), Just("x"),
                Just(""), Just("v1 "), Just(" t"), Just("t "), Just("v1\u{a0}")
            ],
            prop_oneof![
                "[0-9a-f]{64}",
                "[0-9a-fA-F]{0,70}",
                "[g-z0-9]{64}",
                "[0-9a-f]{63}",
                "\\PC{0,20}",
                "[0-9a-f]{32}=[0-9a-f]{31}",
            ]
        )
            .prop_map(|(scheme, value)| Piece::Other(scheme.to_owned(), value)),
        1 => "[ a-z0-9\t]{0,12}".prop_map(Piece::Bare),
    ]
}

fn pad() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(String::new()),
        2 => "[ \t]{1,3}",
        1 => prop_oneof![Just("\r"), Just("\n"), Just("\u{a0}"), Just("\u{feff}")].prop_map(str::to_owned),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    // a well-formed header (one recent `t`, then MACs and other schemes, in any order) with
    // padding, or any sequence of pieces
    let well_formed = (
        (-400i64..400).prop_map(|d| (NOW + d).to_string()),
        prop::collection::vec((pad(), piece(), pad()), 1..4),
    )
        .prop_map(|(t, mut rest)| {
            rest.retain(|(_, p, _)| !matches!(p, Piece::Timestamp(_)));
            rest.insert(0, (String::new(), Piece::Timestamp(t), String::new()));
            rest
        })
        .prop_shuffle();
    let pieces = prop_oneof![
        2 => well_formed,
        3 => prop::collection::vec((pad(), piece(), pad()), 0..7),
    ];
    let separators = prop::collection::vec(
        prop_oneof![8 => Just(","), 1 => Just(",,"), 1 => Just(", "), 1 => Just(";")],
        7,
    );
    let secrets = prop::collection::vec("[!-~]{1,40}", 1..=3);
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        Just(br#"{"type":"sleep","user":{"user_id":"u"}}"#.to_vec()),
    ];
    let tolerance = prop_oneof![Just(0u64), Just(1), Just(300), Just(u64::MAX)];
    (pieces, separators, secrets, body, tolerance).prop_map(
        |(pieces, separators, secrets, body, tolerance)| Case {
            pieces,
            separators: separators.into_iter().map(str::to_owned).collect(),
            secrets,
            body,
            tolerance,
        },
    )
}

fn reference_mac(secret: &str, timestamp_text: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The header text of a case.
fn header(case: &Case) -> String {
    let first_t = case.pieces.iter().find_map(|(_, p, _)| match p {
        Piece::Timestamp(t) => Some(t.clone()),
        _ => None,
    });
    // a MAC over the timestamp the verifier reads: the first `t` element as trimmed
    let signed_t = first_t.unwrap_or_else(|| NOW.to_string());
    let mut out = String::new();
    for (i, (before, piece, after)) in case.pieces.iter().enumerate() {
        out.push_str(before);
        match piece {
            Piece::Timestamp(t) => {
                out.push_str("t=");
                out.push_str(t);
            }
            Piece::GoodMac {
                secret,
                upper,
                flip,
            } => {
                let key = case
                    .secrets
                    .get(*secret)
                    .map_or("whsec_not_configured", String::as_str);
                let mut text = hex::encode(reference_mac(key, &signed_t, &case.body));
                if let Some(at) = flip {
                    let digit = text.as_bytes()[*at];
                    let changed = if digit == b'0' { '1' } else { '0' };
                    text.replace_range(*at..=*at, &changed.to_string());
                }
                if *upper {
                    text = text.to_ascii_uppercase();
                }
                out.push_str("v1=");
                out.push_str(&text);
            }
            Piece::Other(scheme, value) => {
                out.push_str(scheme);
                out.push('=');
                out.push_str(value);
            }
            Piece::Bare(text) => out.push_str(text),
        }
        out.push_str(after);
        if i + 1 < case.pieces.len() {
            out.push_str(&case.separators[i]);
        }
    }
    out
}

/// terra-wire-format §1, written out: elements split on `,`, spaces and tabs around them
/// ignored, `scheme=value`; one `t` (a second is refused), digits only, at most 18 of them;
/// only `v1` entries count, each compared as 32 bytes of hex against HMAC-SHA256 of
/// `t + "." + body` under each secret (trimmed, as configured); then the replay window.
fn reference_verify(
    header: &str,
    secrets: &[String],
    body: &[u8],
    tolerance: u64,
) -> Result<i64, SignatureError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for element in header.split(',') {
        let element = element.trim_matches([' ', '\t']);
        let Some((scheme, value)) = element.split_once('=') else {
            continue;
        };
        match scheme {
            "t" if t.is_some() => return Err(SignatureError::BadTimestamp),
            "t" => t = Some(value),
            "v1" => v1.push(value),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::NoTimestamp)?;
    let digits = !t.is_empty() && t.len() <= 18 && t.bytes().all(|b| b.is_ascii_digit());
    let timestamp: i64 = if digits {
        t.parse().map_err(|_| SignatureError::BadTimestamp)?
    } else {
        return Err(SignatureError::BadTimestamp);
    };
    if v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    let matched = secrets.iter().any(|secret| {
        let expected = reference_mac(secret.trim(), t, body);
        v1.iter()
            .any(|v| hex::decode(v).is_ok_and(|bytes| bytes == expected))
    });
    if !matched {
        return Err(SignatureError::SignatureMismatch);
    }
    if (i128::from(NOW) - i128::from(timestamp)).unsigned_abs() > u128::from(tolerance) {
        return Err(SignatureError::TimestampOutsideTolerance {
            tolerance_secs: tolerance,
        });
    }
    Ok(timestamp)
}

#[test]
fn fuzz_signature_headers_agree_with_the_reference_verifier() {
    let (mut runner, cases) = super::runner();
    let outcomes: RefCell<BTreeMap<&'static str, u64>> = RefCell::default();
    let started = Instant::now();
    let result = runner.run(&case(), |case| {
        let text = header(&case);
        let secrets = case
            .secrets
            .iter()
            .map(|s| SigningSecret::new(s.as_str()).expect("no blank secrets generated"))
            .collect();
        let verifier = Verifier::new(secrets, case.tolerance);
        let got = verifier.verify(Some(&text), &case.body, NOW);
        let want = reference_verify(&text, &case.secrets, &case.body, case.tolerance);
        prop_assert_eq!(&got, &want, "header {:?}", text);
        if let Ok(parsed) = SignatureHeader::parse(&text) {
            prop_assert!(parsed.timestamp() >= 0);
        }
        let code = match &got {
            Ok(_) => "valid",
            Err(e) => e.code(),
        };
        *outcomes.borrow_mut().entry(code).or_default() += 1;
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let outcomes = outcomes.into_inner();
    let executions: u64 = outcomes.values().sum();
    let details = outcomes
        .iter()
        .map(|(code, n)| format!("{code} {:.1}%", super::percent(*n, executions)))
        .collect::<Vec<_>>()
        .join(", ");
    super::report("signature_header", executions, started, &details);
    assert!(
        executions >= u64::from(cases),
        "{executions} of {cases} cases ran"
    );
    // the grammar reaches every answer, valid ones included, often enough to matter
    for code in [
        "valid",
        "no_timestamp",
        "bad_timestamp",
        "no_v1_signature",
        "signature_mismatch",
        "timestamp_outside_tolerance",
    ] {
        let share = super::percent(outcomes.get(code).copied().unwrap_or(0), executions);
        assert!(
            share >= 1.0,
            "{code}: only {share:.2}% of cases ({details})"
        );
    }
}
