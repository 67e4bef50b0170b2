//! HMAC-SHA256 and the encodings of its output, shared by every scheme.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// HMAC-SHA256 keyed with `key`.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// SHA-256's block size: HMAC hashes a longer key, and zero-pads a shorter one to it.
const BLOCK: usize = 64;

/// An HMAC-SHA256 over the concatenation of `parts`. Built from the RFC 2104 block key
/// (hashed when longer than a block, zero-padded) so that it is infallible for any key length,
/// exactly like `Mac::new_from_slice` (unit-tested against it).
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut mac = <HmacSha256 as KeyInit>::new(&block.into());
    for part in parts {
        mac.update(part);
    }
    mac
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
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
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
