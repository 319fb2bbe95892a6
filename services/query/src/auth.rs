//! Bearer-token authentication of the query service (a tonic interceptor). Tokens are
//! compared as SHA-256 digests in constant time, every configured token each time, so neither
//! the time to answer nor an early exit tells a caller how long a token is or which one
//! almost matched.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Checks `authorization: Bearer <token>` against the configured tokens in constant time.
#[derive(Clone)]
pub struct BearerAuth {
    /// SHA-256 of each accepted token: fixed-size, so comparing never depends on lengths.
    digests: Arc<Vec<[u8; 32]>>,
}

impl BearerAuth {
    pub fn new(tokens: &[String]) -> Self {
        Self {
            digests: Arc::new(tokens.iter().map(|t| digest(t.as_bytes())).collect()),
        }
    }

    /// Whether `presented` is one of the tokens: all of them compared, no early exit.
    fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        let mut ok = subtle::Choice::from(0);
        for accepted in self.digests.iter() {
            ok |= accepted.ct_eq(&presented);
        }
        bool::from(ok)
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.digests.is_empty() {
            return Ok(request);
        }
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Status::unauthenticated("missing bearer token (authorization: Bearer <token>)")
            })?;
        if self.accepts(presented.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(v) = value {
            request
                .metadata_mut()
                .insert("authorization", v.parse().unwrap());
        }
        request
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let mut auth = BearerAuth::new(&["old".into(), "new".into()]);
        assert!(auth.call(with(Some("Bearer new"))).is_ok());
        assert!(auth.call(with(Some("Bearer old"))).is_ok());
        assert_eq!(
            auth.call(with(Some("Bearer nope"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.call(with(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.call(with(Some("Basic new"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(BearerAuth::new(&[]).call(with(None)).is_ok());
    }

    /// Prefixes, extensions and other lengths of a token are refused, the token itself is
    /// accepted, and what is compared is always 32 bytes, whatever the lengths.
    #[test]
    fn hostile_tokens_of_other_lengths_are_refused_and_compared_as_fixed_size_digests() {
        let token = "a-long-enough-token-1";
        let mut auth = BearerAuth::new(&["short-but-16-chars".into(), token.into()]);
        assert!(auth.digests.iter().all(|d| d.len() == 32));
        assert!(auth.call(with(Some(&format!("Bearer {token}")))).is_ok());
        for hostile in [
            &token[..token.len() - 1],
            &token[..1],
            &format!("{token}x"),
            &format!("{token}{token}"),
            &"a".repeat(4096),
            "a-long-enough-token-2",
        ] {
            assert!(!auth.accepts(hostile.as_bytes()), "{hostile:?}");
            assert_eq!(
                auth.call(with(Some(&format!("Bearer {hostile}"))))
                    .unwrap_err()
                    .code(),
                tonic::Code::Unauthenticated,
                "{hostile:?}"
            );
        }
        assert!(!auth.accepts(b""));
    }
}
