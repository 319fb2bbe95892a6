//! Opaque, tamper-evident tokens (page tokens, watch positions): JSON, HMAC-SHA256 over it
//! with the service's key, both hex. A changed token fails verification; clients get
//! INVALID_ARGUMENT naming the field.

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The key tokens are signed with. Keep it across restarts (standalone stores one in the data
/// dir) so resume positions and page tokens stay valid.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(***)")
    }
}

impl TokenKey {
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self(key.as_ref().to_vec())
    }

    fn mac(&self, text: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(text);
        mac.finalize().into_bytes().into()
    }

    /// Signs a value into a token.
    pub fn seal<T: Serialize>(&self, value: &T) -> String {
        let text = serde_json::to_vec(value).expect("token values serialise");
        format!(
            "{}.{}",
            hex::encode(&text),
            hex::encode(&self.mac(&text)[..16])
        )
    }

    /// The value of a token this key sealed; `None` for anything else.
    pub fn open<T: DeserializeOwned>(&self, token: &str) -> Option<T> {
        let (text, tag) = token.split_once('.')?;
        let text = hex::decode(text).ok()?;
        let tag = hex::decode(tag).ok()?;
        if tag.len() != 16 || !bool::from(self.mac(&text)[..16].ct_eq(&tag)) {
            return None;
        }
        serde_json::from_slice(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_any_change_is_refused() {
        let key = TokenKey::new("k");
        let token = key.seal(&("after", 42u64));
        assert_eq!(
            key.open::<(String, u64)>(&token),
            Some(("after".into(), 42))
        );
        assert_eq!(TokenKey::new("other").open::<(String, u64)>(&token), None);
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != token {
                assert_eq!(key.open::<(String, u64)>(&changed), None, "byte {i}");
            }
        }
        assert_eq!(key.open::<(String, u64)>("garbage"), None);
        assert_eq!(key.open::<(String, u64)>(""), None);
    }
}
