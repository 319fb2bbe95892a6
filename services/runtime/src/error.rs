//! One table from an error's kind to what a client is told: the HTTP status of the ingress
//! and the gRPC code of the query service (as quickwit's `ServiceErrorCode`). Each service's
//! error enum says which [`ErrorCode`] each of its variants is; the status and code follow
//! from here only.

use axum::http::StatusCode;

/// The kinds of failure a client can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed (bad header, bad argument, unreadable body).
    BadRequest,
    /// No or wrong credentials (signature, bearer token).
    Unauthenticated,
    /// The caller may not do this (address not allowed).
    Forbidden,
    /// The thing asked for does not exist.
    NotFound,
    /// The request's body is over a configured limit.
    TooLarge,
    /// The client did not send its request in time.
    ClientTimeout,
    /// A limit of the service is reached (connections, calls, watchers): retry later.
    Overloaded,
    /// A dependency (log, database, store) cannot serve now: retry later.
    Unavailable,
    /// The work did not finish within the service's deadline.
    DeadlineExceeded,
    /// A bug or an unexpected state on our side.
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            // Terra retries anything but 2xx; 503 tells it (and proxies) to come back
            Self::Overloaded | Self::Unavailable | Self::DeadlineExceeded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::BadRequest => tonic::Code::InvalidArgument,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::Forbidden => tonic::Code::PermissionDenied,
            Self::NotFound => tonic::Code::NotFound,
            Self::TooLarge => tonic::Code::OutOfRange,
            Self::ClientTimeout | Self::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Self::Overloaded => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// A gRPC status of this kind with `message` (which must not carry secrets or values).
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds_are_retryable_on_both_protocols() {
        for code in [
            ErrorCode::Overloaded,
            ErrorCode::Unavailable,
            ErrorCode::DeadlineExceeded,
        ] {
            assert_eq!(code.http_status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(matches!(
                code.grpc_code(),
                tonic::Code::ResourceExhausted
                    | tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
            ));
        }
        // a client's own mistake is never one it is told to retry
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthenticated,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::TooLarge,
        ] {
            assert!(code.http_status().is_client_error());
            assert_ne!(code.grpc_code(), tonic::Code::Unavailable);
        }
    }
}
