//! `/admin` tokens: one pinned algorithm, any of the configured keys (rotation).

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{
    Principal, Refusal, VerifierError, base_validation, header_fields, map_error, principal,
};
use crate::config::{AdminAlgorithm, AdminConfig};

/// `/admin` token verification.
pub struct AdminVerifier {
    alg: Algorithm,
    alg_name: &'static str,
    keys: Vec<DecodingKey>,
    validation: Validation,
    grant_claim: String,
    channel_claim: String,
    project_claim: String,
}

impl std::fmt::Debug for AdminVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminVerifier")
            .field("alg", &self.alg)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl AdminVerifier {
    /// From the `admin` section; a key that does not parse is a configuration error.
    pub fn new(config: &AdminConfig) -> Result<Self, VerifierError> {
        let pem_keys =
            |family: &'static str,
             parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>| {
                config
                    .public_keys
                    .iter()
                    .enumerate()
                    .map(|(index, pem)| {
                        parse(pem.as_bytes()).map_err(|source| VerifierError::PublicKey {
                            index,
                            family,
                            source,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
        let (alg, keys) = match config.algorithm {
            AdminAlgorithm::HS256 => (
                Algorithm::HS256,
                vec![DecodingKey::from_secret(config.secret.as_bytes())],
            ),
            AdminAlgorithm::RS256 => (
                Algorithm::RS256,
                pem_keys("RSA", DecodingKey::from_rsa_pem)?,
            ),
            AdminAlgorithm::ES256 => (Algorithm::ES256, pem_keys("EC", DecodingKey::from_ec_pem)?),
        };
        Ok(Self {
            alg,
            alg_name: config.algorithm.as_str(),
            keys,
            validation: base_validation(alg, &config.issuer, &config.audience, config.leeway_secs),
            grant_claim: config.subscribe_claim.clone(),
            channel_claim: String::new(),
            project_claim: String::new(),
        })
    }

    /// Also reads the chat channels a token lists from `claim` (`collab.membership_claim`).
    #[must_use]
    pub fn with_channel_claim(mut self, claim: &str) -> Self {
        claim.clone_into(&mut self.channel_claim);
        self
    }

    /// Also reads the projects a token lists from `claim` (`integrations.projects_claim`).
    #[must_use]
    pub fn with_project_claim(mut self, claim: &str) -> Self {
        claim.clone_into(&mut self.project_claim);
        self
    }

    /// Verifies a token: pinned algorithm, signature with any configured key, `exp`, `nbf`,
    /// issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Principal, Refusal> {
        let (alg, _) = header_fields(token)?;
        if alg != self.alg_name {
            return Err(Refusal::AlgorithmNotAllowed);
        }
        let mut refusal = Refusal::BadSignature;
        for key in &self.keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation) {
                Ok(data) => {
                    return principal(
                        data.claims,
                        &self.grant_claim,
                        &self.channel_claim,
                        &self.project_claim,
                    );
                }
                Err(e) => {
                    refusal = map_error(&e);
                    if refusal != Refusal::BadSignature {
                        return Err(refusal);
                    }
                }
            }
        }
        debug_assert!(self.alg == Algorithm::HS256 || !self.keys.is_empty());
        Err(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(issuer: &str, audience: &str) -> AdminVerifier {
        AdminVerifier::new(&AdminConfig {
            secret: SECRET.to_owned(),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ..AdminConfig::default()
        })
        .unwrap()
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn hs256(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn accepts_a_valid_token_and_reads_sub_and_exp() {
        let exp = now() + 60;
        let p = verifier("", "")
            .verify(&hs256(&json!({"sub": 7, "exp": exp})))
            .unwrap();
        assert_eq!(p.subject.as_deref(), Some("7"));
        assert_eq!(p.expires_at, exp);
    }

    #[test]
    fn refuses_expired_unsigned_foreign_and_misaddressed_tokens() {
        let v = verifier("crm", "realtime");
        let good = json!({"exp": now() + 60, "iss": "crm", "aud": "realtime"});
        assert!(v.verify(&hs256(&good)).is_ok());
        let expired = json!({"exp": now() - 10, "iss": "crm", "aud": "realtime"});
        assert_eq!(v.verify(&hs256(&expired)).unwrap_err(), Refusal::Expired);
        let later = json!({"exp": now() + 60, "nbf": now() + 30, "iss": "crm", "aud": "realtime"});
        assert_eq!(v.verify(&hs256(&later)).unwrap_err(), Refusal::NotYetValid);
        let wrong_aud = json!({"exp": now() + 60, "iss": "crm", "aud": "other"});
        assert_eq!(
            v.verify(&hs256(&wrong_aud)).unwrap_err(),
            Refusal::WrongAudience
        );
        let wrong_iss = json!({"exp": now() + 60, "iss": "x", "aud": "realtime"});
        assert_eq!(
            v.verify(&hs256(&wrong_iss)).unwrap_err(),
            Refusal::WrongIssuer
        );
        let no_exp = json!({"iss": "crm", "aud": "realtime"});
        assert_eq!(v.verify(&hs256(&no_exp)).unwrap_err(), Refusal::Malformed);
        let no_aud = json!({"exp": now() + 60, "iss": "crm"});
        assert_eq!(
            v.verify(&hs256(&no_aud)).unwrap_err(),
            Refusal::WrongAudience
        );
        let no_iss = json!({"exp": now() + 60, "aud": "realtime"});
        assert_eq!(v.verify(&hs256(&no_iss)).unwrap_err(), Refusal::WrongIssuer);
        // Not configured: not required.
        assert!(verifier("", "").verify(&hs256(&no_iss)).is_ok());

        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &good,
            &EncodingKey::from_secret(b"another secret entirely"),
        )
        .unwrap();
        assert_eq!(v.verify(&forged).unwrap_err(), Refusal::BadSignature);

        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(good.to_string());
        assert_eq!(
            v.verify(&format!("{none_header}.{body}.")).unwrap_err(),
            Refusal::AlgorithmNotAllowed
        );
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &good,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&hs512).unwrap_err(), Refusal::AlgorithmNotAllowed);
        assert_eq!(v.verify("garbage").unwrap_err(), Refusal::Malformed);
    }

    #[test]
    fn messages_never_echo_the_credential() {
        for r in [
            Refusal::BadSignature,
            Refusal::Malformed,
            Refusal::UnknownKey,
        ] {
            assert!(r.to_string().starts_with("invalid token: "));
        }
    }
}
