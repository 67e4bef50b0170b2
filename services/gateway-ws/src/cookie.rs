//! express-session signed cookies: `connect.sid=s%3A<sid>.<signature>`.
//!
//! The signature is base64 (no padding) of HMAC-SHA256 over the sid keyed with the session
//! secret, as npm `cookie-signature` computes it. Several secrets may be configured for
//! rotation: any of them verifies. Comparison is constant-time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a cookie does not identify a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// No cookie with the configured name.
    #[error("no session cookie")]
    Missing,
    /// Present but not `s:<sid>.<signature>`.
    #[error("malformed session cookie")]
    Malformed,
    /// The signature matches none of the secrets.
    #[error("invalid session cookie signature")]
    BadSignature,
}

/// Finds cookie `name` in a `Cookie` header value and returns its percent-decoded value.
pub fn find_cookie(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| percent_decode(v.trim().trim_matches('"')))
    })
}

/// Verifies a decoded express-session cookie value against `secrets` and returns the sid.
pub fn unsign<S: AsRef<[u8]>>(value: &str, secrets: &[S]) -> Result<String, CookieError> {
    let signed = value.strip_prefix("s:").ok_or(CookieError::Malformed)?;
    let (sid, signature) = signed.rsplit_once('.').ok_or(CookieError::Malformed)?;
    if sid.is_empty() {
        return Err(CookieError::Malformed);
    }
    let provided = STANDARD_NO_PAD
        .decode(signature.trim_end_matches('='))
        .map_err(|_| CookieError::BadSignature)?;
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_ref()) else {
            continue;
        };
        mac.update(sid.as_bytes());
        // `verify_slice` compares in constant time.
        if mac.verify_slice(&provided).is_ok() {
            return Ok(sid.to_owned());
        }
    }
    Err(CookieError::BadSignature)
}

/// Signs a sid the way express-session does (`s:<sid>.<signature>`), for tests and tools.
pub fn sign(sid: &str, secret: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(sid.as_bytes());
    format!(
        "s:{sid}.{}",
        STANDARD_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h << 4) | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn vectors() -> Vec<Value> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/vectors.json");
        let raw = std::fs::read_to_string(path).expect("../shared/vectors.json beside the repo");
        let v: Value = serde_json::from_str(&raw).unwrap();
        v["express_session"].as_array().unwrap().clone()
    }

    #[test]
    fn verifies_the_cookie_signature_vectors() {
        for v in vectors() {
            let secret = v["secret"].as_str().unwrap();
            let sid = v["sid"].as_str().unwrap();
            let cookie_value = v["cookie_value"].as_str().unwrap();
            assert_eq!(sign(sid, secret.as_bytes()), cookie_value);
            assert_eq!(unsign(cookie_value, &[secret]).unwrap(), sid);

            // The Set-Cookie header form, percent-encoded, read back from a Cookie header.
            let header = v["set_cookie_header"].as_str().unwrap();
            let cookie_header = format!("theme=dark; {header}; other=1");
            let found = find_cookie(&cookie_header, "connect.sid").unwrap();
            assert_eq!(found, cookie_value);
            assert_eq!(
                unsign(&found, &["old secret", secret]).unwrap(),
                sid,
                "rotation"
            );
        }
    }

    #[test]
    fn rejects_forged_malformed_and_missing_cookies() {
        let v = &vectors()[0];
        let secret = v["secret"].as_str().unwrap();
        let good = v["cookie_value"].as_str().unwrap();
        assert_eq!(
            unsign(good, &["wrong secret"]),
            Err(CookieError::BadSignature)
        );
        let forged = good.replace("B7pJ", "B7pK");
        assert_eq!(unsign(&forged, &[secret]), Err(CookieError::BadSignature));
        assert_eq!(
            unsign("B7pJxXrA.sig", &[secret]),
            Err(CookieError::Malformed)
        );
        assert_eq!(unsign("s:nodot", &[secret]), Err(CookieError::Malformed));
        assert_eq!(
            unsign("s:abc.!!!", &[secret]),
            Err(CookieError::BadSignature)
        );
        assert_eq!(find_cookie("a=1; b=2", "connect.sid"), None);
        let empty: [&str; 0] = [];
        assert_eq!(unsign(good, &empty), Err(CookieError::BadSignature));
    }
}
