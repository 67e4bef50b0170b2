//! Loading the configuration the way the binary does (defaults, then environment).
#![allow(clippy::unwrap_used)]

use service_runtime::{ConfigError, ConfigSource, Settings};

use super::Config;

const SECRET: &str = "a-real-secret-0123456789";

fn load(extra: &[(&str, &str)]) -> Result<Settings<Config>, ConfigError> {
    let mut env = vec![
        ("DATABASE__URL", "postgres://postgres@127.0.0.1:5432/app"),
        ("ADMIN__SECRET", SECRET),
    ];
    env.extend_from_slice(extra);
    let env = env
        .into_iter()
        .map(|(k, v)| (format!("{}{k}", crate::SPEC.env_prefix), v.to_owned()))
        .collect();
    crate::SPEC.load::<Config>(&ConfigSource { file: None, env })
}

#[test]
fn defaults_load() {
    let settings = load(&[]).unwrap();
    assert_eq!(settings.service.limits.max_connections_per_ip, 200);
    assert!(!settings.service.limits.client_ip.trust_forwarded_for);
}

#[test]
fn shipped_placeholder_secrets_are_refused_naming_the_key() {
    // The values k8s/base/gateway-socketio.yaml ships.
    let err = load(&[("ADMIN__SECRET", "CHANGE-ME-example-hs256-secret")]).unwrap_err();
    assert_eq!(err.key, "admin.secret");
    assert!(!err.to_string().contains("example-hs256"), "{err}");
    let err = load(&[(
        "API__KEYS",
        r#"["a-real-api-key-0123", "change-me-api-key"]"#,
    )])
    .unwrap_err();
    assert_eq!(err.key, "api.keys[1]");
    assert!(!err.to_string().contains("api-key"), "{err}");
    // Also for an algorithm that does not use the secret: the deployment was not finished.
    let pem = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----";
    let err = load(&[
        ("ADMIN__ALGORITHM", "ES256"),
        ("ADMIN__PUBLIC_KEYS", &format!("[{pem:?}]")),
        ("ADMIN__SECRET", "CHANGE-ME"),
    ])
    .unwrap_err();
    assert_eq!(err.key, "admin.secret");
    // database.url is refused centrally.
    let err = load(&[(
        "DATABASE__URL",
        "postgres://platform:CHANGE-ME-example@db:5432/platform",
    )])
    .unwrap_err();
    assert_eq!(err.key, "database.url");
}

#[test]
fn trusted_proxies_are_parsed_at_load() {
    let settings = load(&[
        ("LIMITS__TRUST_FORWARDED_FOR", "true"),
        ("LIMITS__TRUSTED_PROXIES", r#"["10.0.0.0/8", "fd00::/8"]"#),
    ])
    .unwrap();
    let policy = &settings.service.limits.client_ip;
    assert!(policy.trust_forwarded_for);
    assert_eq!(policy.trusted_proxies.len(), 2);
    assert_eq!(policy.trusted_proxies[0].to_string(), "10.0.0.0/8");

    let err = load(&[("LIMITS__TRUSTED_PROXIES", r#"["10.0.0.0/33"]"#)]).unwrap_err();
    assert!(err.key.starts_with("limits"), "{err}");
}

#[test]
fn the_old_forwarded_for_key_is_refused_not_ignored() {
    let err = load(&[("STAT__TRUST_FORWARDED_FOR", "true")]).unwrap_err();
    assert_eq!(err.key, "stat.trust_forwarded_for");
    assert!(err.message.contains("limits.trust_forwarded_for"), "{err}");
}

#[test]
fn caps_must_be_positive() {
    for key in [
        "LIMITS__MAX_CONNECTIONS",
        "LIMITS__MAX_CONNECTIONS_PER_IP",
        "ADMIN__MAX_TARGETS_PER_REQUEST",
        "WIDGET__CACHE_ENTRIES",
        "COLLAB__MAX_RECIPIENTS",
        "COLLAB__MAX_PUSH_BYTES",
        "COLLAB__MAX_VIEWING_PER_SOCKET",
        "PRESENCE__MAX_QUERY_IDS",
        "PRESENCE__MAX_WATCHED_PER_SOCKET",
        "PRESENCE__HEARTBEAT_MS",
        "TYPING__TIMEOUT_MS",
    ] {
        let err = load(&[(key, "0")]).unwrap_err();
        assert_eq!(
            err.key,
            key.to_ascii_lowercase().replace("__", "."),
            "{key}: {err}"
        );
    }
}

#[test]
fn provider_algorithms_are_parsed_at_load() {
    use super::ProviderAlgorithm;
    let settings = load(&[("PROVIDER__ALGORITHMS", r#"["ES384", "PS256"]"#)]).unwrap();
    assert_eq!(
        settings.service.provider.algorithms,
        [ProviderAlgorithm::ES384, ProviderAlgorithm::PS256]
    );
    // Refused even while /provider is not configured: a typo must not wait for the issuer.
    let err = load(&[("PROVIDER__ALGORITHMS", r#"["ES384", "HS256"]"#)]).unwrap_err();
    assert!(err.key.starts_with("provider.algorithms"), "{err}");
    for alg in ProviderAlgorithm::ALL {
        assert_eq!(ProviderAlgorithm::from_name(alg.as_str()), Some(alg));
    }
    assert_eq!(ProviderAlgorithm::from_name("none"), None);
}

#[test]
fn prepare_builds_what_run_needs_and_names_the_key_it_refuses() {
    let prepared = crate::prepare(&load(&[("SOCKETIO__CORS_ORIGINS", r#"["*"]"#)]).unwrap());
    assert!(prepared.is_ok(), "{prepared:?}");

    let settings = load(&[
        ("ADMIN__ALGORITHM", "ES256"),
        (
            "ADMIN__PUBLIC_KEYS",
            r#"["-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----"]"#,
        ),
    ])
    .unwrap();
    assert_eq!(
        crate::prepare(&settings).unwrap_err().key,
        "admin.public_keys[0]"
    );

    let settings = load(&[("SOCKETIO__CORS_ORIGINS", r#"["https://a.example\n"]"#)]).unwrap();
    assert_eq!(
        crate::prepare(&settings).unwrap_err().key,
        "socketio.cors_origins"
    );
}

#[test]
fn collaboration_settings_are_checked_against_each_other() {
    let settings = load(&[]).unwrap();
    assert_eq!(
        settings.service.collab.membership,
        super::MembershipSource::Request,
        "membership is asked of the backend unless configured otherwise"
    );
    let claim = load(&[("COLLAB__MEMBERSHIP", "claim")]).unwrap();
    assert_eq!(
        claim.service.collab.membership,
        super::MembershipSource::Claim
    );
    assert!(load(&[("COLLAB__MEMBERSHIP", "anyone")]).is_err());
    let err = load(&[
        ("COLLAB__MEMBERSHIP", "claim"),
        ("COLLAB__MEMBERSHIP_CLAIM", ""),
    ])
    .unwrap_err();
    assert_eq!(err.key, "collab.membership_claim");
    let err = load(&[
        ("PRESENCE__HEARTBEAT_MS", "1000"),
        ("PRESENCE__TTL_MS", "1500"),
    ])
    .unwrap_err();
    assert_eq!(err.key, "presence.ttl_ms");
    let err = load(&[("PRESENCE__BUCKET", "a.b")]).unwrap_err();
    assert_eq!(err.key, "presence.bucket");
    let err = load(&[("TYPING__RENEW_MS", "6000")]).unwrap_err();
    assert_eq!(err.key, "typing.renew_ms");
}
