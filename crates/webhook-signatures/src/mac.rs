//! HMAC-SHA256 and the encodings of its output, shared by every scheme.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// HMAC-SHA256 keyed with `key`.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// SHA-256's block size: HMAC hashes a longer key, and zero-pads a shorter one to it.
const BLOCK: usize = 64;

/// An HMAC-SHA256 key with its setup done once: the padded key blocks are already hashed, so
/// each message signed with it saves two SHA-256 compressions and allocates nothing. Build one
/// per secret and reuse it for every message that secret signs. Its `Debug` never shows it.
#[derive(Clone)]
pub struct HmacKey(HmacSha256);

impl HmacKey {
    /// Prepares `key`, of any length. Built from the RFC 2104 block key (hashed when longer
    /// than a block, zero-padded) so that it is infallible, exactly like `Mac::new_from_slice`
    /// (unit-tested against it).
    pub fn new(key: &[u8]) -> Self {
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        Self(<HmacSha256 as KeyInit>::new(&block.into()))
    }

    /// An HMAC over the concatenation of `parts`, started from the prepared state.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        mac
    }
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(redacted)")
    }
}

/// An HMAC-SHA256 keyed with `key` over the concatenation of `parts`, for a key used once.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    HmacKey::new(key).mac(parts)
}

/// A Unix timestamp's decimal digits, formatted on the stack: the signed text of every
/// timestamped scheme, built per message without allocating.
pub(crate) struct Decimal {
    buf: [u8; 20],
    len: usize,
}

impl Decimal {
    /// `value` in decimal (`-9223372036854775808`, the longest, is 20 bytes).
    pub(crate) fn new(value: i64) -> Self {
        use std::io::Write;
        let mut buf = [0u8; 20];
        let mut rest = &mut buf[..];
        // 20 bytes hold every i64, so the write cannot run out of room.
        let _ = write!(rest, "{value}");
        let len = 20 - rest.len();
        Self { buf, len }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Whether any candidate equals the MAC's output, each compared in constant time. Every
/// candidate is compared (no early exit), so the time does not say which one matched.
pub(crate) fn matches_any(mac: &HmacSha256, candidates: &[Vec<u8>]) -> bool {
    candidates.iter().fold(false, |found, candidate| {
        mac.clone().verify_slice(candidate).is_ok() | found
    })
}

/// The MAC's output.
pub(crate) fn tag(mac: HmacSha256) -> [u8; 32] {
    mac.finalize().into_bytes().into()
}

/// Lowercase hex.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    hex_encode_into(bytes, &mut out);
    out
}

/// Appends lowercase hex to `out`.
pub(crate) fn hex_encode_into(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Hex in either case; `None` when not an even number of hex digits.
pub(crate) fn hex_decode(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn block_key_hmac_equals_the_library_for_every_key_length() {
        for len in [0, 1, 31, 32, 63, 64, 65, 100, 200] {
            let key: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
            let ours = tag(hmac(&key, &[b"a.", b"body"]));
            let mut theirs = <HmacSha256 as Mac>::new_from_slice(&key).unwrap();
            theirs.update(b"a.body");
            assert_eq!(
                ours,
                <[u8; 32]>::from(theirs.finalize().into_bytes()),
                "key length {len}"
            );
        }
    }

    #[test]
    fn a_prepared_key_signs_like_a_fresh_one_every_time() {
        let key = HmacKey::new(b"prepared");
        let fresh = tag(hmac(b"prepared", &[b"one"]));
        assert_eq!(tag(key.mac(&[b"one"])), fresh);
        assert_eq!(
            tag(key.mac(&[b"o", b"ne"])),
            fresh,
            "the state is not consumed"
        );
        assert_eq!(format!("{key:?}"), "HmacKey(redacted)");
    }

    #[test]
    fn timestamps_format_like_to_string() {
        for value in [0, 7, -1, 1_763_700_000, i64::MAX, i64::MIN] {
            assert_eq!(Decimal::new(value).as_bytes(), value.to_string().as_bytes());
        }
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let bytes = [0x00, 0x7f, 0xab, 0xff];
        assert_eq!(hex_encode(&bytes), "007fabff");
        assert_eq!(hex_decode("007FabfF").unwrap(), bytes);
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn any_matching_candidate_passes() {
        let mac = hmac(b"k", &[b"body"]);
        let good = tag(mac.clone()).to_vec();
        assert!(matches_any(&mac, &[vec![1; 32], good.clone()]));
        assert!(!matches_any(&mac, &[vec![1; 32], good[..31].to_vec()]));
        assert!(!matches_any(&mac, &[]));
    }
}
