//! `/provider`: the Provider App. Logto access tokens checked against the issuer's JWKS, and
//! the provider subset of the collaboration events of [`crate::collab`].

use serde_json::Value;
use socketioxide::extract::{SocketRef, State, TryData};

use crate::auth::Refusal;
use crate::gateway::Shared;
use crate::handshake::{admit_socket, refused, token, track};
use crate::namespace::Namespace;

pub(crate) async fn handshake(
    s: SocketRef,
    State(g): Shared,
    TryData(auth): TryData<Value>,
) -> Result<(), Refusal> {
    let ns = Namespace::Provider;
    let verifier = g
        .provider
        .as_ref()
        .ok_or_else(|| refused(ns, Refusal::ProviderNotConfigured))?;
    let (_, slot) = admit_socket(&s, &g, ns)?;
    let token = token(auth).ok_or_else(|| refused(ns, Refusal::MissingToken))?;
    let principal = verifier.verify(&token).await.map_err(|r| refused(ns, r))?;
    crate::collab::attach(&s, &g, ns, &principal);
    s.extensions.insert(principal);
    s.extensions.insert(slot);
    Ok(())
}

pub(crate) async fn on_connect(s: SocketRef, State(g): Shared) {
    track(
        &s,
        &g,
        Namespace::Provider,
        crate::collab::connected(&s, &g),
    );
}
