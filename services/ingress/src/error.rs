//! Every way a webhook request can fail, mapped to one HTTP status and a stable error code.
//! The JSON body says what was wrong in terms of the request; it never echoes the body, the
//! header or a secret.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use terra_core::SignatureError;
use terra_runtime::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("unknown webhook source {0:?}")]
    UnknownSource(String),
    #[error("client address {0} is not allowed for this source")]
    Forbidden(String),
    #[error("client address could not be determined from X-Forwarded-For")]
    UnknownClient,
    #[error("request body exceeds the {limit} byte limit")]
    TooLarge { limit: usize },
    #[error("failed to read the request body")]
    BodyRead,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("the event log cannot accept the webhook right now; retry later")]
    LogUnavailable { retry_after: Duration },
    #[error("the ingress is at its limit of {0}; retry later")]
    Overloaded(&'static str),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("the webhook could not be handled within {0:?}; retry later")]
    RequestTimeout(Duration),
    #[error("the same delivery was being accepted by another request and was not; retry later")]
    ConcurrentCopyFailed,
}

impl IngressError {
    /// The kind of failure; the HTTP status follows from it (`terra_runtime::ErrorCode`).
    pub fn kind(&self) -> ErrorCode {
        match self {
            Self::UnknownSource(_) => ErrorCode::NotFound,
            Self::Forbidden(_) | Self::UnknownClient => ErrorCode::Forbidden,
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::BodyRead => ErrorCode::BadRequest,
            Self::Signature(err) if err.is_malformed() => ErrorCode::BadRequest,
            Self::Signature(_) => ErrorCode::Unauthenticated,
            Self::BodyTimeout(_) => ErrorCode::ClientTimeout,
            Self::LogUnavailable { .. } | Self::ConcurrentCopyFailed => ErrorCode::Unavailable,
            Self::Overloaded(_) => ErrorCode::Overloaded,
            Self::RequestTimeout(_) => ErrorCode::DeadlineExceeded,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.kind().http_status()
    }

    /// Stable code, also the `outcome` label of the request metric.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownSource(_) => "unknown_source",
            Self::Forbidden(_) | Self::UnknownClient => "forbidden",
            Self::TooLarge { .. } => "too_large",
            Self::BodyRead => "body_read_failed",
            Self::Signature(err) => err.code(),
            Self::LogUnavailable { .. } => "log_unavailable",
            Self::Overloaded(_) => "overloaded",
            Self::BodyTimeout(_) => "body_timeout",
            Self::RequestTimeout(_) => "request_timeout",
            Self::ConcurrentCopyFailed => "concurrent_copy_failed",
        }
    }

    /// How long a client should wait before retrying, for the 503 answers.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::LogUnavailable { retry_after } => Some(*retry_after),
            Self::Overloaded(_) | Self::ConcurrentCopyFailed => Some(Duration::from_secs(1)),
            Self::RequestTimeout(_) => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Some(retry_after) = self.retry_after() {
            let secs = retry_after.as_secs().max(1).to_string();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs).expect("digits"),
            );
        }
        response
    }
}
