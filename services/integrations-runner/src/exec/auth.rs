//! Placing an integration's credentials on a request.

use super::error::ExecError;
use super::oauth::TokenCache;
use super::spec::{Auth, Target};

/// Adds the credentials of `target` to `builder` (whose URL is `url`).
pub async fn place(
    builder: reqwest::RequestBuilder,
    url: &reqwest::Url,
    target: &Target,
    tokens: &TokenCache,
    client: &reqwest::Client,
    policy: &egress::AddressPolicy,
    deadline: tokio::time::Instant,
) -> Result<reqwest::RequestBuilder, ExecError> {
    Ok(match &target.auth {
        Auth::None => builder,
        Auth::Bearer(token) => builder.bearer_auth(&token.0),
        Auth::Header { name, value } => {
            let mut value = reqwest::header::HeaderValue::from_str(&value.0)
                .map_err(|_| ExecError::Unreachable)?;
            value.set_sensitive(true);
            builder.header(name, value)
        }
        Auth::Query { name, value } => {
            // The whole URL is replaced: the key joins the rendered query.
            let mut with_key = url.clone();
            with_key.query_pairs_mut().append_pair(name, &value.0);
            let (client_part, request) = builder.build_split();
            let mut request = request.map_err(|_| ExecError::Unreachable)?;
            *request.url_mut() = with_key;
            reqwest::RequestBuilder::from_parts(client_part, request)
        }
        Auth::Basic { username, password } => builder.basic_auth(username, Some(&password.0)),
        Auth::OAuth2(oauth) => {
            let token = tokens
                .token(&target.id, oauth, client, policy, deadline)
                .await?;
            builder.bearer_auth(&token.0)
        }
    })
}
