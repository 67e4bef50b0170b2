//! Encryption of stored credentials: AES-256-GCM (`ring::aead`).
//!
//! A sealed blob is `nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`; the nonce is random per
//! seal (`ring::rand::SystemRandom`), and the associated data is the integration id, so a blob
//! copied onto another row does not open. Keys are configured as `crypto.keys = [{id, key}]`
//! (`key`: base64 of 32 bytes) with `crypto.active_key_id` naming the one that seals; a row
//! records the id of the key that sealed it (`secrets_key_id`), so keys can rotate: add a new
//! key, make it active, and rows sealed under the old one still open while it is configured.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use service_runtime::{ConfigError, reject_placeholder};

use crate::model::{Id, Secrets};

/// Length of a key, in bytes.
pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// The `crypto` configuration section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CryptoConfig {
    /// The keys that may open stored secrets; one of them seals new ones.
    pub keys: Vec<KeyConfig>,
    /// The id of the key that seals; empty: the only key, when there is exactly one.
    pub active_key_id: String,
}

/// One configured key.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyConfig {
    /// Its id, recorded with every row it seals: 1 to 32 of `[A-Za-z0-9_-]`.
    pub id: String,
    /// Base64 (standard, padded) of 32 random bytes. Never logged.
    pub key: String,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyConfig")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Why sealing or opening failed. Never carries key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The keyring has no key to seal with.
    #[error("no active encryption key is configured")]
    NoActiveKey,
    /// The row names a key that is not configured (removed too early?).
    #[error("encryption key {0:?} is not configured")]
    UnknownKey(String),
    /// Shorter than a nonce and a tag.
    #[error("the sealed blob is truncated")]
    Truncated,
    /// Wrong key, wrong associated data, or the blob was altered.
    #[error("the sealed blob does not open (wrong key, wrong integration, or altered)")]
    Open,
    /// The system random source failed.
    #[error("the random source failed")]
    Random,
    /// ring refused to seal (the plaintext is absurdly large).
    #[error("sealing failed")]
    Seal,
    /// The opened plaintext is not a secrets object (a bug or a foreign row).
    #[error("the opened secrets are not valid: {0}")]
    Decode(String),
}

struct Keys {
    by_id: HashMap<String, LessSafeKey>,
    active: Option<String>,
    rng: SystemRandom,
}

/// The configured keys. Cheap to clone; `Debug` shows key ids only.
#[derive(Clone)]
pub struct Keyring(Arc<Keys>);

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&str> = self.0.by_id.keys().map(String::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("Keyring")
            .field("keys", &ids)
            .field("active", &self.0.active)
            .finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Keyring {
    /// From the `crypto` section; errors name the key at fault (`crypto.keys[1].key`) and
    /// never repeat a key. An empty section gives an empty keyring (that seals nothing):
    /// [`CryptoConfig::validate`] refuses that at start.
    pub fn from_config(config: &CryptoConfig) -> Result<Self, ConfigError> {
        let mut by_id = HashMap::new();
        for (i, k) in config.keys.iter().enumerate() {
            if !valid_key_id(&k.id) {
                return Err(ConfigError::new(
                    format!("crypto.keys[{i}].id"),
                    "must be 1 to 32 letters, digits, '_' or '-'",
                ));
            }
            let field = format!("crypto.keys[{i}].key");
            reject_placeholder(&field, &k.key)?;
            let bytes = STANDARD
                .decode(k.key.trim())
                .map_err(|_| ConfigError::new(&field, "is not base64"))?;
            if bytes.len() != KEY_LEN {
                return Err(ConfigError::new(
                    &field,
                    "must be base64 of exactly 32 bytes (openssl rand -base64 32)",
                ));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| ConfigError::new(&field, "is not an AES-256 key"))?;
            if by_id.insert(k.id.clone(), LessSafeKey::new(key)).is_some() {
                return Err(ConfigError::new(
                    format!("crypto.keys[{i}].id"),
                    "is listed twice",
                ));
            }
        }
        let active = if config.active_key_id.is_empty() {
            match config.keys.as_slice() {
                [only] => Some(only.id.clone()),
                [] => None,
                _ => {
                    return Err(ConfigError::new(
                        "crypto.active_key_id",
                        "is required when more than one key is configured",
                    ));
                }
            }
        } else if by_id.contains_key(&config.active_key_id) {
            Some(config.active_key_id.clone())
        } else {
            return Err(ConfigError::new(
                "crypto.active_key_id",
                "names no key of crypto.keys",
            ));
        };
        Ok(Self(Arc::new(Keys {
            by_id,
            active,
            rng: SystemRandom::new(),
        })))
    }

    /// The id of the key that seals, if any.
    pub fn active_key_id(&self) -> Option<&str> {
        self.0.active.as_deref()
    }

    /// Seals `plaintext` under the active key with `aad`: `(key id, blob)`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<(String, Vec<u8>), CryptoError> {
        let id = self.0.active.as_ref().ok_or(CryptoError::NoActiveKey)?;
        let key = self
            .0
            .by_id
            .get(id)
            .ok_or_else(|| CryptoError::UnknownKey(id.clone()))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.0
            .rng
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Random)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(plaintext);
        let mut in_out = blob.split_off(NONCE_LEN);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut in_out,
        )
        .map_err(|_| CryptoError::Seal)?;
        blob.extend_from_slice(&in_out);
        Ok((id.clone(), blob))
    }

    /// Opens a blob sealed under `key_id` with `aad`.
    pub fn open(&self, key_id: &str, aad: &[u8], blob: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self
            .0
            .by_id
            .get(key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Truncated);
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Truncated)?;
        let mut in_out = sealed.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| CryptoError::Open)?;
        Ok(plain.to_vec())
    }

    /// Seals the secrets of integration `id` (the id is the associated data).
    pub fn seal_secrets(
        &self,
        id: &Id,
        secrets: &Secrets,
    ) -> Result<(String, Vec<u8>), CryptoError> {
        let plain = serde_json::to_vec(secrets).map_err(|e| CryptoError::Decode(e.to_string()))?;
        self.seal(id.as_str().as_bytes(), &plain)
    }

    /// Opens the secrets of integration `id`.
    pub fn open_secrets(&self, key_id: &str, id: &Id, blob: &[u8]) -> Result<Secrets, CryptoError> {
        let plain = self.open(key_id, id.as_str().as_bytes(), blob)?;
        // The serde error may quote the input: report only its category and position.
        serde_json::from_slice(&plain).map_err(|e| {
            CryptoError::Decode(format!("{:?} at column {}", e.classify(), e.column()))
        })
    }
}

impl CryptoConfig {
    /// Loads the keys; the service refuses to start without one (it could not store
    /// credentials).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ring = Keyring::from_config(self)?;
        if ring.active_key_id().is_none() {
            return Err(ConfigError::new(
                "crypto.keys",
                "configure at least one key (base64 of 32 random bytes): credentials are stored encrypted",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{AuthSecret, SecretString};

    fn key(id: &str, byte: u8) -> KeyConfig {
        KeyConfig {
            id: id.to_owned(),
            key: STANDARD.encode([byte; KEY_LEN]),
        }
    }

    fn ring(keys: Vec<KeyConfig>, active: &str) -> Keyring {
        Keyring::from_config(&CryptoConfig {
            keys,
            active_key_id: active.to_owned(),
        })
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let r = ring(vec![key("k1", 1)], "");
        let (id, blob) = r.seal(b"int-1", b"hello").unwrap();
        assert_eq!(id, "k1");
        assert_eq!(blob.len(), NONCE_LEN + 5 + TAG_LEN);
        assert!(!blob.windows(5).any(|w| w == b"hello"));
        assert_eq!(r.open("k1", b"int-1", &blob).unwrap(), b"hello");
        // A fresh nonce each time.
        assert_ne!(r.seal(b"int-1", b"hello").unwrap().1, blob);
    }

    #[test]
    fn wrong_aad_fails() {
        let r = ring(vec![key("k1", 1)], "k1");
        let (_, blob) = r.seal(b"int-1", b"hello").unwrap();
        assert_eq!(r.open("k1", b"int-2", &blob), Err(CryptoError::Open));
    }

    #[test]
    fn wrong_key_fails() {
        let a = ring(vec![key("k1", 1)], "k1");
        let b = ring(vec![key("k1", 2)], "k1");
        let (_, blob) = a.seal(b"int-1", b"hello").unwrap();
        assert_eq!(b.open("k1", b"int-1", &blob), Err(CryptoError::Open));
        assert_eq!(
            a.open("k9", b"int-1", &blob),
            Err(CryptoError::UnknownKey("k9".into()))
        );
    }

    #[test]
    fn tampered_byte_fails() {
        let r = ring(vec![key("k1", 1)], "k1");
        let (_, blob) = r.seal(b"int-1", b"hello world").unwrap();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                r.open("k1", b"int-1", &bad),
                Err(CryptoError::Open),
                "byte {i}"
            );
        }
        assert_eq!(
            r.open("k1", b"int-1", &blob[..20]),
            Err(CryptoError::Truncated)
        );
    }

    #[test]
    fn rotation_keeps_old_rows_readable() {
        let before = ring(vec![key("k1", 1)], "k1");
        let id = Id::parse("64b2c3d4e5f6789012345678").unwrap();
        let secrets = Secrets {
            auth: Some(AuthSecret::Token {
                token: SecretString::new("tok"),
            }),
            webhook: None,
        };
        let (old_key, old_blob) = before.seal_secrets(&id, &secrets).unwrap();
        let after = ring(vec![key("k1", 1), key("k2", 2)], "k2");
        assert_eq!(
            after.open_secrets(&old_key, &id, &old_blob).unwrap(),
            secrets
        );
        let (new_key, new_blob) = after.seal_secrets(&id, &secrets).unwrap();
        assert_eq!(new_key, "k2");
        assert_eq!(after.open_secrets("k2", &id, &new_blob).unwrap(), secrets);
        // The old key alone cannot open what the new one sealed.
        assert!(before.open_secrets("k2", &id, &new_blob).is_err());
    }

    #[test]
    fn bad_configs_are_refused_naming_the_key() {
        let load = |keys: Vec<KeyConfig>, active: &str| {
            let c = CryptoConfig {
                keys,
                active_key_id: active.to_owned(),
            };
            c.validate().map(|()| Keyring::from_config(&c).unwrap())
        };
        assert_eq!(load(vec![], "").unwrap_err().key, "crypto.keys");
        let placeholder = KeyConfig {
            id: "k1".into(),
            key: "CHANGE-ME-base64-of-32-random-bytes".into(),
        };
        let err = load(vec![placeholder], "").unwrap_err();
        assert_eq!(err.key, "crypto.keys[0].key");
        assert!(!err.to_string().contains("base64-of-32"), "{err}");
        let short = KeyConfig {
            id: "k1".into(),
            key: STANDARD.encode([1u8; 16]),
        };
        assert_eq!(load(vec![short], "").unwrap_err().key, "crypto.keys[0].key");
        assert_eq!(
            load(vec![key("k1", 1), key("k1", 2)], "k1")
                .unwrap_err()
                .key,
            "crypto.keys[1].id"
        );
        assert_eq!(
            load(vec![key("k1", 1)], "k2").unwrap_err().key,
            "crypto.active_key_id"
        );
        assert_eq!(
            load(vec![key("k1", 1), key("k2", 2)], "").unwrap_err().key,
            "crypto.active_key_id"
        );
        let ok = load(vec![key("k1", 1), key("k2", 2)], "k2").unwrap();
        let shown = format!("{ok:?} {:?}", key("k1", 1));
        assert!(!shown.contains(&STANDARD.encode([1u8; KEY_LEN])), "{shown}");
    }
}
