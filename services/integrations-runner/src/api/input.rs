//! Request bodies: the non-secret parts become model types, the secret parts [`Secrets`].
//!
//! `auth` and `webhook` carry their secrets inline (`{"type": "bearer", "token": "…"}`,
//! `{"scheme": "stripe", "secret": "whsec_…"}`). On a PATCH an omitted secret is kept when the
//! auth type (or the webhook) stays; a change of auth type needs its new secret.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::model::{
    AuthSecret, AuthSecretKind, AuthSpec, Endpoint, EndpointName, FieldError, HeaderField, HttpUrl,
    Id, RateLimitSpec, SecretString, Secrets, WebhookRepr, WebhookScheme, WebhookSpec,
    check_endpoints, check_name, check_provider,
};
use crate::store::{Editable, NewIntegration};

/// Longest secret accepted, in bytes.
const MAX_SECRET_BYTES: usize = 4096;

fn check_secret(field: &str, s: &SecretString) -> Result<(), FieldError> {
    let v = s.expose();
    if v.is_empty() || v.len() > MAX_SECRET_BYTES || v.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must be 1 to 4096 bytes without control characters",
        ));
    }
    Ok(())
}

/// `auth` with its secret.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthInput {
    /// No credentials.
    None,
    /// Bearer token.
    Bearer { token: Option<SecretString> },
    /// A header.
    Header {
        name: HeaderField,
        value: Option<SecretString>,
    },
    /// A query parameter.
    Query {
        name: String,
        value: Option<SecretString>,
    },
    /// Basic auth.
    Basic {
        username: String,
        password: Option<SecretString>,
    },
    /// OAuth2 client credentials.
    #[serde(rename_all = "camelCase")]
    Oauth2ClientCredentials {
        token_url: HttpUrl,
        scope: Option<String>,
        audience: Option<String>,
        client_id: Option<SecretString>,
        client_secret: Option<SecretString>,
    },
}

impl AuthInput {
    /// The spec and secret; an omitted secret is taken from `kept` when of the same kind.
    fn into_parts(
        self,
        kept: Option<&AuthSecret>,
    ) -> Result<(AuthSpec, Option<AuthSecret>), FieldError> {
        let keep = |kind: AuthSecretKind, field: &str| {
            kept.filter(|k| k.kind() == kind)
                .cloned()
                .ok_or_else(|| FieldError::new(field, "is required"))
        };
        let given = |field: &str, s: Option<SecretString>| -> Result<_, FieldError> {
            if let Some(s) = &s {
                check_secret(field, s)?;
            }
            Ok(s)
        };
        let (spec, secret) = match self {
            Self::None => (AuthSpec::None, None),
            Self::Bearer { token } => (
                AuthSpec::Bearer,
                Some(match given("auth.token", token)? {
                    Some(token) => AuthSecret::Token { token },
                    None => keep(AuthSecretKind::Token, "auth.token")?,
                }),
            ),
            Self::Header { name, value } => (
                AuthSpec::Header { name },
                Some(match given("auth.value", value)? {
                    Some(value) => AuthSecret::Value { value },
                    None => keep(AuthSecretKind::Value, "auth.value")?,
                }),
            ),
            Self::Query { name, value } => (
                AuthSpec::Query { name },
                Some(match given("auth.value", value)? {
                    Some(value) => AuthSecret::Value { value },
                    None => keep(AuthSecretKind::Value, "auth.value")?,
                }),
            ),
            Self::Basic { username, password } => (
                AuthSpec::Basic { username },
                Some(match given("auth.password", password)? {
                    Some(password) => AuthSecret::Password { password },
                    None => keep(AuthSecretKind::Password, "auth.password")?,
                }),
            ),
            Self::Oauth2ClientCredentials {
                token_url,
                scope,
                audience,
                client_id,
                client_secret,
            } => {
                let secret = match (
                    given("auth.clientId", client_id)?,
                    given("auth.clientSecret", client_secret)?,
                ) {
                    (Some(client_id), Some(client_secret)) => AuthSecret::ClientCredentials {
                        client_id,
                        client_secret,
                    },
                    (None, None) => keep(AuthSecretKind::ClientCredentials, "auth.clientId")?,
                    (Some(_), None) => {
                        return Err(FieldError::new("auth.clientSecret", "is required"));
                    }
                    (None, Some(_)) => return Err(FieldError::new("auth.clientId", "is required")),
                };
                (
                    AuthSpec::Oauth2ClientCredentials {
                        token_url,
                        scope,
                        audience,
                    },
                    Some(secret),
                )
            }
        };
        spec.check().map_err(|e| e.under("auth"))?;
        Ok((spec, secret))
    }
}

/// `webhook` with its signing secret.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookInput {
    scheme: String,
    header: Option<String>,
    prefix: Option<String>,
    encoding: Option<crate::model::MacEncoding>,
    event_field: Option<String>,
    event_header: Option<String>,
    tolerance_seconds: Option<u64>,
    secret: Option<SecretString>,
}

impl WebhookInput {
    fn into_parts(
        self,
        kept: Option<&SecretString>,
    ) -> Result<(WebhookSpec, SecretString), FieldError> {
        let spec = WebhookSpec::from_repr(WebhookRepr {
            scheme: self.scheme,
            header: self.header,
            prefix: self.prefix,
            encoding: self.encoding,
            event_field: self.event_field,
            event_header: self.event_header,
            tolerance_seconds: self.tolerance_seconds,
        })
        .map_err(|e| e.under("webhook"))?;
        let secret = match self.secret {
            Some(s) => {
                check_secret("webhook.secret", &s)?;
                s
            }
            None => kept
                .cloned()
                .ok_or_else(|| FieldError::new("webhook.secret", "is required"))?,
        };
        if spec.scheme == WebhookScheme::StandardWebhooks {
            webhook_signatures::standard::SigningKey::parse(secret.expose())
                .map_err(|e| FieldError::new("webhook.secret", e.to_string()))?;
        }
        Ok((spec, secret))
    }
}

/// `POST /v1/integrations`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateIntegration {
    id: Option<Id>,
    project_id: Id,
    provider: String,
    name: String,
    base_url: HttpUrl,
    auth: AuthInput,
    #[serde(default)]
    endpoints: BTreeMap<EndpointName, Endpoint>,
    rate_limit: Option<RateLimitSpec>,
    webhook: Option<WebhookInput>,
    #[serde(default = "yes")]
    is_active: bool,
}

fn yes() -> bool {
    true
}

impl CreateIntegration {
    /// Checked, with the secrets split off.
    pub fn into_new(self) -> Result<NewIntegration, FieldError> {
        let provider = self.provider.to_ascii_lowercase();
        check_name(&self.name)?;
        check_provider(&provider)?;
        check_endpoints(&self.endpoints)?;
        if let Some(r) = &self.rate_limit {
            r.check().map_err(|e| e.under("rateLimit"))?;
        }
        let (auth, auth_secret) = self.auth.into_parts(None)?;
        let (webhook, webhook_secret) = match self.webhook {
            Some(w) => {
                let (spec, secret) = w.into_parts(None)?;
                (Some(spec), Some(secret))
            }
            None => (None, None),
        };
        Ok(NewIntegration {
            id: self.id.unwrap_or_else(Id::generate),
            project_id: self.project_id,
            provider,
            name: self.name,
            base_url: self.base_url,
            auth,
            endpoints: self.endpoints,
            rate_limit: self.rate_limit,
            webhook,
            secrets: Secrets {
                auth: auth_secret,
                webhook: webhook_secret,
            },
            is_active: self.is_active,
        })
    }
}

/// `Some(None)` for an explicit `null`, `None` (by `default`) for an absent field.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `PATCH /v1/integrations/{id}`: absent fields stay; `rateLimit: null` and `webhook: null`
/// remove them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchIntegration {
    provider: Option<String>,
    name: Option<String>,
    base_url: Option<HttpUrl>,
    auth: Option<AuthInput>,
    endpoints: Option<BTreeMap<EndpointName, Endpoint>>,
    #[serde(default, deserialize_with = "nullable")]
    rate_limit: Option<Option<RateLimitSpec>>,
    #[serde(default, deserialize_with = "nullable")]
    webhook: Option<Option<WebhookInput>>,
    is_active: Option<bool>,
}

impl PatchIntegration {
    /// Applies the patch to `e`.
    pub fn apply(self, e: &mut Editable) -> Result<(), FieldError> {
        if let Some(p) = self.provider {
            let p = p.to_ascii_lowercase();
            check_provider(&p)?;
            e.provider = p;
        }
        if let Some(n) = self.name {
            check_name(&n)?;
            e.name = n;
        }
        if let Some(u) = self.base_url {
            e.base_url = u;
        }
        if let Some(a) = self.auth {
            let (spec, secret) = a.into_parts(e.secrets.auth.as_ref())?;
            e.auth = spec;
            e.secrets.auth = secret;
        }
        if let Some(endpoints) = self.endpoints {
            check_endpoints(&endpoints)?;
            e.endpoints = endpoints;
        }
        match self.rate_limit {
            Some(Some(r)) => {
                r.check().map_err(|err| err.under("rateLimit"))?;
                e.rate_limit = Some(r);
            }
            Some(None) => e.rate_limit = None,
            None => {}
        }
        match self.webhook {
            Some(Some(w)) => {
                let (spec, secret) = w.into_parts(e.secrets.webhook.as_ref())?;
                e.webhook = Some(spec);
                e.secrets.webhook = Some(secret);
            }
            Some(None) => {
                e.webhook = None;
                e.secrets.webhook = None;
            }
            None => {}
        }
        if let Some(a) = self.is_active {
            e.is_active = a;
        }
        Ok(())
    }
}
