//! What an object-store failure means for the projector, decided in one place
//! (docs/ARCHITECTURE.md, "The object sink", has the same table):
//!
//! - **outage** (`SinkError::Outage`): no answer (connection refused or reset, DNS, timeout),
//!   5xx but 501, 408, 429, a write that lost the conditional-put race 16 times in a row, and
//!   any failure without an HTTP status. The projector pauses and retries the batch.
//! - **refusal** (`SinkError::Refused`): the store answers but refuses every write until
//!   someone acts: 401 and 403 (credentials, permissions, a clock too far off), 404 on a write
//!   (the bucket or container does not exist), 400 and the other 4xx (a setting or header
//!   the store does not accept), 501 (a feature the server does not implement, such as
//!   conditional puts), a redirect (the wrong region). Paused and retried like an outage, so
//!   nothing is skipped once it is fixed, but reported as an error with the cause, counted in
//!   `projector_sink_refused`, and readiness is not ready until a write succeeds.
//! - **rejection of one record** (`SinkError::Rejected`): the object itself is refused: 413
//!   and `EntityTooLarge` / `RequestBodyTooLarge` (the body exceeds the store's or a proxy's
//!   size limit, as Supabase Storage's file size limit does), an object path the store
//!   library cannot form. That record is dead-lettered; the others go on.
//! - `NotImplemented` / `NotSupported` from object_store: a store without an operation the
//!   sink needs: the projector stops (`SinkError::Fatal`).
//!
//! object_store maps 401/403/404/409/412 to its own variants and reports every other status
//! only in its error text (`... status code: 400 Bad Request: <body>`; the type holding it is
//! private), so the status and the store's error code (`<Code>...</Code>`) are read from the
//! text. The cause kept for logs and `/readyz` is the status, the code and the first line of
//! the store's message: never a credential (object_store leaves signed URLs out of its
//! errors) nor a body we sent.

use terra_projector::SinkError;

/// The classes above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Outage,
    Refused,
    Rejected,
    Fatal,
}

/// An HTTP answer read from an error: its status and the store's error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: Option<u16>,
    pub(crate) code: Option<String>,
    pub(crate) message: Option<String>,
}

/// Error codes that name the object itself as too large.
const TOO_LARGE_CODES: [&str; 3] = [
    "EntityTooLarge",
    "RequestBodyTooLarge",
    "RequestEntityTooLarge",
];

pub(crate) fn classify(err: &object_store::Error) -> Class {
    use object_store::Error as E;
    match err {
        E::NotImplemented | E::NotSupported { .. } => Class::Fatal,
        E::InvalidPath { .. } => Class::Rejected,
        E::Unauthenticated { .. }
        | E::PermissionDenied { .. }
        | E::UnknownConfigurationKey { .. }
        | E::NotFound { .. } => Class::Refused,
        E::Generic { .. } => {
            let answer = answer(err);
            match (answer.status, answer.code.as_deref()) {
                (_, Some(code)) if TOO_LARGE_CODES.contains(&code) => Class::Rejected,
                (Some(413), _) => Class::Rejected,
                (Some(408 | 429), _) => Class::Outage,
                (Some(501), _) => Class::Refused,
                (Some(500..=599), _) => Class::Outage,
                (Some(300..=499), _) => Class::Refused,
                (None, _) if text(err).contains("redirect") => Class::Refused,
                _ => Class::Outage,
            }
        }
        _ => Class::Outage,
    }
}

/// The status, code and message of the store's answer, as far as the error says.
pub(crate) fn answer(err: &object_store::Error) -> Answer {
    let text = text(err);
    let status = text.find("status code: ").and_then(|at| {
        let digits = text.get(at + 13..at + 16)?;
        digits.parse::<u16>().ok()
    });
    let status = status.or(match err {
        object_store::Error::Unauthenticated { .. } => Some(401),
        object_store::Error::PermissionDenied { .. } => Some(403),
        object_store::Error::NotFound { .. } => Some(404),
        _ => None,
    });
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        let value = text[start..end].lines().next().unwrap_or("").trim();
        (!value.is_empty()).then(|| value.chars().take(200).collect::<String>())
    };
    // XML (S3, Azure, GCS's XML API), else JSON (`{"error": {"message": ...}}`), else the
    // answer's text after the status
    let message = between("<Message>", "</Message>")
        .or_else(|| between("\"message\":\"", "\""))
        .or_else(|| {
            let at = text.find("status code: ")?;
            let rest = text[at..].split_once(": ")?.1.split_once(": ")?.1;
            let rest = rest.lines().next()?.trim();
            (!rest.is_empty()).then(|| rest.chars().take(200).collect())
        });
    Answer {
        status,
        code: between("<Code>", "</Code>"),
        message,
    }
}

/// The error and every source's text, joined.
fn text(err: &object_store::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        // object_store's variants print their source already
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The failure of `what` (`PUT <key>`, ...) as the projector sees it, with a cause that names
/// the status and the store's code.
pub(crate) fn sink_error(what: &str, err: object_store::Error) -> SinkError {
    let class = classify(&err);
    let answer = answer(&err);
    let message = answer
        .message
        .as_deref()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    let cause = match (&answer.status, &answer.code) {
        (Some(status), Some(code)) => format!("{what} answered {status} {code}{message}"),
        (Some(status), None) => format!("{what} answered {status}{message}"),
        _ => format!("{what} failed: {}", first_line(&err)),
    };
    match class {
        Class::Outage => SinkError::Outage(format!("object store: {cause}")),
        Class::Refused => SinkError::Refused(format!("object store: {cause}{}", hint(&answer))),
        Class::Rejected => SinkError::Rejected(format!("object store: {cause}")),
        Class::Fatal => SinkError::Fatal(format!("object store: {cause}")),
    }
}

/// What to look at for the usual refusals.
fn hint(answer: &Answer) -> &'static str {
    match (answer.status, answer.code.as_deref()) {
        (Some(401 | 403), _) => {
            "; check the store's credentials and the permissions they carry (and the clock)"
        }
        (Some(404), _) => "; does the bucket or container exist?",
        (Some(501), _) => {
            "; an S3-compatible server without conditional puts needs AWS_CONDITIONAL_PUT=disabled"
        }
        _ => "",
    }
}

/// The error's own text up to its first line break, bounded (an XML body is cut off).
fn first_line(err: &object_store::Error) -> String {
    let text = err.to_string();
    let line = text.lines().next().unwrap_or("");
    let line = line.split("<?xml").next().unwrap_or(line).trim_end();
    line.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_owned().into(),
        }
    }

    // The wording is object_store 0.12's `RequestError::Status`; the tests on real servers
    // (`errors.rs` of the test binaries) check it end to end.
    #[test]
    fn statuses_and_codes_choose_the_class() {
        let cases = [
            (
                "Server returned non-2xx status code: 503 Service Unavailable: ",
                Class::Outage,
            ),
            (
                "Server returned non-2xx status code: 500 Internal Server Error: ",
                Class::Outage,
            ),
            (
                "Server returned non-2xx status code: 429 Too Many Requests: ",
                Class::Outage,
            ),
            (
                "Server returned non-2xx status code: 408 Request Timeout: ",
                Class::Outage,
            ),
            (
                "Server returned non-2xx status code: 501 Not Implemented: ",
                Class::Refused,
            ),
            (
                "Server returned non-2xx status code: 400 Bad Request: <Error><Code>InvalidMetadata</Code></Error>",
                Class::Refused,
            ),
            (
                "Server returned non-2xx status code: 301 Moved Permanently: ",
                Class::Refused,
            ),
            (
                "Received redirect without LOCATION, this normally indicates an incorrectly configured region",
                Class::Refused,
            ),
            (
                "Server returned non-2xx status code: 413 Payload Too Large: ",
                Class::Rejected,
            ),
            (
                "Server returned non-2xx status code: 400 Bad Request: <Error><Code>EntityTooLarge</Code></Error>",
                Class::Rejected,
            ),
            ("HTTP error: error sending request: Connect", Class::Outage),
        ];
        for (text, class) in cases {
            assert_eq!(classify(&generic(text)), class, "{text}");
        }
    }

    #[test]
    fn a_json_or_plain_answer_gives_its_message() {
        let json = generic(
            "Error performing PUT http://h/b/k in 1ms - Server returned non-2xx status code: 400 Bad Request: {\"error\":{\"code\":400,\"message\":\"invalid uploadType\"}}",
        );
        let SinkError::Refused(why) = sink_error("PUT k", json) else {
            panic!("a 400 is a refusal")
        };
        assert_eq!(why, "object store: PUT k answered 400 (invalid uploadType)");
        let html = generic(
            "Error performing PUT http://h/b/k in 1ms - Server returned non-2xx status code: 413 Payload Too Large: <html>\n<head>",
        );
        let SinkError::Rejected(why) = sink_error("PUT k", html) else {
            panic!("a 413 is one record's")
        };
        assert_eq!(why, "object store: PUT k answered 413 (<html>)");
    }

    #[test]
    fn the_cause_names_status_code_and_message_without_the_rest() {
        let err = generic(
            "Error performing PUT http://h/a in 1ms - Server returned non-2xx status code: 400 Bad Request: <?xml version=\"1.0\"?>\n<Error>\n  <Code>InvalidMetadata</Code>\n  <Message>The metadata specified is invalid.\nRequestId:1</Message>\n</Error>",
        );
        let SinkError::Refused(why) = sink_error("PUT a.json", err) else {
            panic!("a 400 is a refusal")
        };
        assert_eq!(
            why,
            "object store: PUT a.json answered 400 InvalidMetadata (The metadata specified is invalid.)"
        );
    }
}
