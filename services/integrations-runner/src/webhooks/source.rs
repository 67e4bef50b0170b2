//! [`TargetSource`] over the integrations store: the row and its decrypted secrets become a
//! [`WebhookTarget`].

use futures_util::future::BoxFuture;
use webhook_signatures::Tolerance;
use webhook_signatures::hmac_header::{Encoding, HmacHeader};
use webhook_signatures::standard::SigningKey;

use super::target::{EventSource, LoadError, SecretBytes, TargetSource, Verifier, WebhookTarget};
use crate::model::{EventLocation, Id, MacEncoding, WebhookScheme};
use crate::store::Store;

/// Webhook targets read from the store.
#[derive(Debug, Clone)]
pub struct StoreTargets {
    store: Store,
}

impl StoreTargets {
    /// Targets from `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn find(&self, raw_id: &str) -> Result<Option<WebhookTarget>, LoadError> {
        let Ok(id) = Id::parse(raw_id) else {
            return Ok(None);
        };
        let fail = |e: crate::store::StoreError| LoadError(Box::new(e));
        let Some(stored) = self.store.get(&id).await.map_err(fail)? else {
            return Ok(None);
        };
        let integration = &stored.integration;
        let Some(spec) = integration
            .webhook
            .as_ref()
            .filter(|_| integration.is_active)
        else {
            return Ok(None);
        };
        // A webhook without a signing secret is not configured: nothing could verify.
        let Some(secret) = self.store.open(&stored).map_err(fail)?.webhook else {
            return Ok(None);
        };
        let bytes = || SecretBytes(secret.expose().as_bytes().to_vec());
        let tolerance = Tolerance::from_secs(spec.tolerance_seconds);
        let verifier = match &spec.scheme {
            WebhookScheme::Stripe => Verifier::Stripe {
                secret: bytes(),
                tolerance,
            },
            WebhookScheme::Github => Verifier::Github { secret: bytes() },
            WebhookScheme::StandardWebhooks => match SigningKey::parse(secret.expose()) {
                Ok(key) => Verifier::Standard { key, tolerance },
                Err(err) => {
                    tracing::warn!(integration = %raw_id, error = %err, "webhook secret is not whsec_<base64>");
                    return Ok(None);
                }
            },
            WebhookScheme::Hmac {
                header,
                prefix,
                encoding,
                event,
            } => Verifier::Hmac {
                scheme: HmacHeader {
                    header: header.clone(),
                    prefix: prefix.clone(),
                    encoding: match encoding {
                        MacEncoding::Hex => Encoding::Hex,
                        MacEncoding::Base64 => Encoding::Base64,
                    },
                },
                secret: bytes(),
                event: match event {
                    EventLocation::Field(f) => EventSource::Field(f.clone()),
                    EventLocation::Header(h) => EventSource::Header(h.clone()),
                },
            },
        };
        Ok(Some(WebhookTarget {
            integration_id: integration.id.as_str().to_owned(),
            project_id: integration.project_id.as_str().to_owned(),
            provider: integration.provider.to_lowercase(),
            verifier,
        }))
    }
}

impl TargetSource for StoreTargets {
    fn load<'a>(
        &'a self,
        integration_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<WebhookTarget>, LoadError>> {
        Box::pin(self.find(integration_id))
    }
}
