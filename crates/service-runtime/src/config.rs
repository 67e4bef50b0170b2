//! Layered configuration: built-in defaults, an optional TOML file, then prefixed environment
//! variables (`GATEWAY_WS_NATS__URL` sets `nats.url`), validated before anything starts.
//!
//! The environment is passed in as data ([`ConfigSource`]), so tests never touch the process
//! environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Exit code for an invalid configuration (`EX_USAGE`).
pub const EXIT_INVALID_CONFIG: u8 = 64;

/// A configuration value that is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    /// Dotted key, e.g. `nats.url`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The marker of a secret that ships in an example or manifest and must be replaced before use
/// (the Secrets in `k8s/base/*.yaml` and `k8s/overlays/dev` ship `CHANGE-ME-...` values).
pub const PLACEHOLDER_MARKER: &str = "change-me";

/// Refuses a secret that is still a shipped placeholder: any value containing
/// [`PLACEHOLDER_MARKER`], in any case. The error names `key` and never repeats the value.
pub fn reject_placeholder(key: &str, secret: &str) -> Result<(), ConfigError> {
    if secret.to_ascii_lowercase().contains(PLACEHOLDER_MARKER) {
        return Err(ConfigError::new(
            key,
            "is still a shipped placeholder (CHANGE-ME...): set a real secret",
        ));
    }
    Ok(())
}

/// Checks a loaded configuration beyond what its types say.
pub trait Validate {
    /// The first invalid value, if any.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Where configuration comes from, besides the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// A TOML file, if one was given.
    pub file: Option<PathBuf>,
    /// Environment variables (all of them; only the service's prefix is read).
    pub env: Vec<(String, String)>,
}

impl ConfigSource {
    /// The process environment plus an optional file.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Self {
            file,
            env: std::env::vars().collect(),
        }
    }
}

/// A service's whole configuration: the sections every service has, and its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings<S> {
    /// `http`, `nats`, `database`, `shutdown`, `log`.
    pub common: CommonConfig,
    /// The service's own top-level sections.
    pub service: S,
}

/// Loads a service's settings from `common_defaults` and `S::default()`, then `source.file`,
/// then the variables starting with `prefix` (`__` separates nesting levels; keys are
/// lower-cased), and validates them. `database_required` makes `database.url` mandatory.
pub fn load<S>(
    prefix: &str,
    source: &ConfigSource,
    common_defaults: CommonConfig,
    database_required: bool,
) -> Result<Settings<S>, ConfigError>
where
    S: DeserializeOwned + Serialize + Default + Validate,
{
    let mut figment = Figment::from(Serialized::defaults(common_defaults))
        .merge(Serialized::defaults(S::default()));
    if let Some(file) = &source.file {
        if !file.is_file() {
            return Err(ConfigError::new(
                "config file",
                format!("{} does not exist", file.display()),
            ));
        }
        figment = figment.merge(Toml::file_exact(file));
    }
    figment = figment.merge(Serialized::defaults(env_dict(prefix, &source.env)));
    // Two extractions from one figment, so every error carries the full key path.
    let common: CommonConfig = figment.extract().map_err(figment_error)?;
    let service: S = figment.extract().map_err(figment_error)?;
    common.validate(database_required)?;
    service.validate()?;
    Ok(Settings { common, service })
}

fn figment_error(e: figment::Error) -> ConfigError {
    let key = if e.path.is_empty() {
        "config".to_owned()
    } else {
        e.path.join(".")
    };
    ConfigError::new(key, e.kind.to_string())
}

fn env_dict(prefix: &str, env: &[(String, String)]) -> Dict {
    let mut root = Dict::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            continue;
        }
        let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
        insert(&mut root, &path, value);
    }
    root
}

fn insert(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}

/// The HTTP listener of a service (its surface plus `/healthz`, `/readyz`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpConfig {
    /// Address to bind.
    pub listen: SocketAddr,
}

/// How to reach NATS and the limits of the streams this service provisions.
///
/// Credentials: `user` + `password`, or `token`, or neither (a server without
/// authorization). Any other combination is refused at start ([`NatsConfig::auth`]).
/// `Debug` never shows the password or the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated: `nats://host:4222`.
    pub url: String,
    /// Seconds to wait for one connection attempt.
    pub connect_timeout_secs: u64,
    /// Days the `EVENTS` stream keeps domain events.
    pub events_max_age_days: u64,
    /// Seconds within which a repeated event id is dropped by JetStream.
    pub duplicate_window_secs: u64,
    /// JetStream replicas for streams and buckets this service provisions.
    pub replicas: usize,
    /// NATS user name; needs `password`.
    pub user: Option<String>,
    /// Password of `user` (a Secret in the manifests).
    pub password: Option<String>,
    /// Authentication token, instead of `user` and `password`.
    pub token: Option<String>,
    /// A NATS `.creds` file (JWT and NKey seed). Not supported: async-nats is built without
    /// its `nkeys` feature, so setting it is refused rather than silently ignored.
    pub credentials_file: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            connect_timeout_secs: 5,
            events_max_age_days: 7,
            duplicate_window_secs: 120,
            replicas: 1,
            user: None,
            password: None,
            token: None,
            credentials_file: None,
        }
    }
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |set: bool| if set { Some("redacted") } else { None };
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("events_max_age_days", &self.events_max_age_days)
            .field("duplicate_window_secs", &self.duplicate_window_secs)
            .field("replicas", &self.replicas)
            .field("user", &self.user)
            .field("password", &redacted(self.password.is_some()))
            .field("token", &redacted(self.token.is_some()))
            .field("credentials_file", &self.credentials_file)
            .finish()
    }
}

/// How a service proves who it is to NATS: [`NatsConfig::auth`] parsed.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (a server without an `authorization` block).
    Anonymous,
    /// `nats.user` and `nats.password`.
    UserPassword {
        /// User name.
        user: String,
        /// Its password.
        password: String,
    },
    /// `nats.token`.
    Token(String),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"redacted")
                .finish(),
            Self::Token(_) => f.write_str("Token(redacted)"),
        }
    }
}

impl NatsConfig {
    /// The credentials these values describe. Refuses (naming the key, never the secret): a
    /// user without a password or the reverse, a token together with a user or password,
    /// an empty value, a shipped `CHANGE-ME` placeholder, and `credentials_file`.
    pub fn auth(&self) -> Result<NatsAuth, ConfigError> {
        if self.credentials_file.is_some() {
            return Err(ConfigError::new(
                "nats.credentials_file",
                "is not supported by this build (async-nats without its nkeys feature): \
                 use nats.user with nats.password, or nats.token",
            ));
        }
        for (key, value) in [
            ("nats.user", &self.user),
            ("nats.password", &self.password),
            ("nats.token", &self.token),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(ConfigError::new(key, "is empty: unset it or give a value"));
            }
        }
        match (&self.user, &self.password, &self.token) {
            (None, None, None) => Ok(NatsAuth::Anonymous),
            (Some(user), Some(password), None) => {
                reject_placeholder("nats.password", password)?;
                Ok(NatsAuth::UserPassword {
                    user: user.clone(),
                    password: password.clone(),
                })
            }
            (None, None, Some(token)) => {
                reject_placeholder("nats.token", token)?;
                Ok(NatsAuth::Token(token.clone()))
            }
            (_, _, Some(_)) => Err(ConfigError::new(
                "nats.token",
                "set either nats.token or nats.user with nats.password, not both",
            )),
            (Some(_), None, None) => Err(ConfigError::new(
                "nats.password",
                "is required with nats.user",
            )),
            (None, Some(_), None) => Err(ConfigError::new(
                "nats.user",
                "is required with nats.password",
            )),
        }
    }

    /// The `EVENTS` stream settings these values describe.
    pub fn events_stream(&self) -> events::provision::StreamSettings {
        events::provision::StreamSettings {
            max_age: Duration::from_secs(self.events_max_age_days * 24 * 3600),
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            replicas: self.replicas,
            ..events::provision::StreamSettings::events()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for url in self.url.split(',') {
            let url = url.trim();
            let rest = url
                .strip_prefix("nats://")
                .or_else(|| url.strip_prefix("tls://"))
                .unwrap_or(url);
            let valid = rest
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(ConfigError::new(
                    "nats.url",
                    format!("{url:?} is not nats://host:port"),
                ));
            }
        }
        if self.connect_timeout_secs == 0 {
            return Err(ConfigError::new(
                "nats.connect_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.events_max_age_days == 0 {
            return Err(ConfigError::new(
                "nats.events_max_age_days",
                "must be at least 1",
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ConfigError::new("nats.replicas", "must be 1 to 5"));
        }
        self.auth()?;
        Ok(())
    }
}

/// PostgreSQL, for services that keep state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseConfig {
    /// `postgres://user@host:5432/db`; empty when the service runs without a database.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Seconds to wait for a pooled connection.
    pub acquire_timeout_secs: u64,
    /// Settings every connection of the pool starts with (`SET name = value` in the startup
    /// packet), chosen by the service for its own statements, not by configuration.
    #[serde(skip)]
    pub session: &'static [(&'static str, &'static str)],
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 10,
            acquire_timeout_secs: 5,
            session: &[],
        }
    }
}

impl DatabaseConfig {
    /// Checks the values; `required` says whether this service needs a database.
    pub fn validate(&self, required: bool) -> Result<(), ConfigError> {
        if self.url.is_empty() {
            return if required {
                Err(ConfigError::new("database.url", "is required"))
            } else {
                Ok(())
            };
        }
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                "database.url",
                "must start with postgres:// or postgresql://",
            ));
        }
        // The URL carries the password.
        reject_placeholder("database.url", &self.url)?;
        self.connect_options()?;
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl DatabaseConfig {
    /// `url` parsed. An unparsable URL is an error naming `database.url` (never echoing it: it
    /// may carry a password).
    pub fn connect_options(&self) -> Result<sqlx::postgres::PgConnectOptions, ConfigError> {
        let options: sqlx::postgres::PgConnectOptions = self.url.parse().map_err(|_| {
            ConfigError::new(
                "database.url",
                "does not parse as postgres://user[:password]@host[:port]/database[?options]",
            )
        })?;
        Ok(if self.session.is_empty() {
            options
        } else {
            options.options(self.session.iter().copied())
        })
    }
}

/// How long a stopping service may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownConfig {
    /// Seconds between SIGTERM and a forced exit; keep it below Kubernetes'
    /// `terminationGracePeriodSeconds`.
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_secs: 25 }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Logging.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
}

/// The sections every service has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommonConfig {
    /// HTTP listener.
    pub http: HttpConfig,
    /// NATS.
    pub nats: NatsConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Shutdown.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
}

impl CommonConfig {
    /// Defaults with the service's own HTTP port.
    pub fn with_port(port: u16) -> Self {
        Self {
            http: HttpConfig {
                listen: SocketAddr::from(([0, 0, 0, 0], port)),
            },
            nats: NatsConfig::default(),
            database: DatabaseConfig::default(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
        }
    }

    /// Validates every section; `database_required` says whether `database.url` must be set.
    pub fn validate(&self, database_required: bool) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.database.validate(database_required)?;
        if !(1..=3600).contains(&self.shutdown.grace_secs) {
            return Err(ConfigError::new("shutdown.grace_secs", "must be 1 to 3600"));
        }
        Ok(())
    }

    /// The shutdown grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown.grace_secs)
    }
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self::with_port(8080)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct TestConfig {
        feature: FeatureConfig,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct FeatureConfig {
        limit: u32,
        names: Vec<String>,
    }

    impl Default for TestConfig {
        fn default() -> Self {
            Self {
                feature: FeatureConfig {
                    limit: 5,
                    names: vec![],
                },
            }
        }
    }

    impl Default for FeatureConfig {
        fn default() -> Self {
            TestConfig::default().feature
        }
    }

    impl Validate for TestConfig {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.feature.limit > 100 {
                return Err(ConfigError::new("feature.limit", "must be at most 100"));
            }
            Ok(())
        }
    }

    fn load_test(source: &ConfigSource) -> Result<Settings<TestConfig>, ConfigError> {
        load("SVC_", source, CommonConfig::with_port(9000), false)
    }

    fn env(pairs: &[(&str, &str)]) -> ConfigSource {
        ConfigSource {
            file: None,
            env: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn defaults_apply_without_input() {
        let c = load_test(&env(&[])).unwrap();
        assert_eq!(c.service, TestConfig::default());
        assert_eq!(c.common, CommonConfig::with_port(9000));
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[http]\nlisten = \"127.0.0.1:7000\"\n[feature]\nlimit = 7\n[nats]\nurl = \"nats://file:4222\""
        )
        .unwrap();
        let source = ConfigSource {
            file: Some(file.path().to_owned()),
            env: env(&[
                ("SVC_NATS__URL", "nats://env:4222"),
                ("SVC_FEATURE__NAMES", "[a, b]"),
                ("SVC_SHUTDOWN__GRACE_SECS", "3"),
                ("OTHER_NATS__URL", "nats://ignored:1"),
            ])
            .env,
        };
        let c = load_test(&source).unwrap();
        assert_eq!(c.common.http.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.common.nats.url, "nats://env:4222");
        assert_eq!(c.service.feature.limit, 7);
        assert_eq!(c.service.feature.names, ["a", "b"]);
        assert_eq!(c.common.shutdown.grace_secs, 3);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (("SVC_HTTP__LISTEN", "not-an-address"), "http.listen"),
            (("SVC_FEATURE__LIMIT", "many"), "feature.limit"),
            (("SVC_NATS__URL", "nats://nohost"), "nats.url"),
            (("SVC_SHUTDOWN__GRACE_SECS", "0"), "shutdown.grace_secs"),
            (("SVC_DATABASE__URL", "mysql://x"), "database.url"),
            (
                ("SVC_DATABASE__URL", "postgres://u@h:notaport/db"),
                "database.url",
            ),
            (("SVC_FEATURE__LIMIT", "1000"), "feature.limit"),
            (
                ("SVC_DATABASE__URL", "postgres://u:CHANGE-ME-example@db/x"),
                "database.url",
            ),
        ];
        for ((k, v), key) in cases {
            let err = load_test(&env(&[(k, v)])).unwrap_err();
            assert_eq!(err.key, key, "{k}={v}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
        let missing = ConfigSource {
            file: Some("/nonexistent/x.toml".into()),
            env: vec![],
        };
        assert_eq!(load_test(&missing).unwrap_err().key, "config file");
        let placeholder = load_test(&env(&[(
            "SVC_DATABASE__URL",
            "postgres://u:Change-Me-secret@db/x",
        )]))
        .unwrap_err();
        assert!(
            !placeholder.to_string().contains("secret@"),
            "{placeholder}"
        );
        let required = load::<TestConfig>("SVC_", &env(&[]), CommonConfig::default(), true);
        assert_eq!(required.unwrap_err().key, "database.url");
    }

    #[test]
    fn nats_credentials_parse_and_never_show() {
        let anonymous = load_test(&env(&[])).unwrap();
        assert_eq!(anonymous.common.nats.auth().unwrap(), NatsAuth::Anonymous);

        let c = load_test(&env(&[
            ("SVC_NATS__USER", "gateway-ws"),
            ("SVC_NATS__PASSWORD", "0f3a-secret-pw"),
        ]))
        .unwrap();
        assert_eq!(
            c.common.nats.auth().unwrap(),
            NatsAuth::UserPassword {
                user: "gateway-ws".to_owned(),
                password: "0f3a-secret-pw".to_owned(),
            }
        );
        let shown = format!("{c:?} {:?}", c.common.nats.auth().unwrap());
        assert!(shown.contains("gateway-ws"), "{shown}");
        assert!(!shown.contains("0f3a-secret-pw"), "{shown}");

        let t = load_test(&env(&[("SVC_NATS__TOKEN", "tok-secret-value")])).unwrap();
        assert_eq!(
            t.common.nats.auth().unwrap(),
            NatsAuth::Token("tok-secret-value".to_owned())
        );
        let shown = format!("{t:?} {:?}", t.common.nats.auth().unwrap());
        assert!(!shown.contains("tok-secret-value"), "{shown}");
    }

    #[test]
    fn inconsistent_nats_credentials_fail_closed() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("SVC_NATS__USER", "u")], "nats.password"),
            (&[("SVC_NATS__PASSWORD", "p-secret")], "nats.user"),
            (
                &[("SVC_NATS__TOKEN", "t-secret"), ("SVC_NATS__USER", "u")],
                "nats.token",
            ),
            (
                &[
                    ("SVC_NATS__TOKEN", "t-secret"),
                    ("SVC_NATS__PASSWORD", "p-secret"),
                ],
                "nats.token",
            ),
            (
                &[("SVC_NATS__USER", "u"), ("SVC_NATS__PASSWORD", "")],
                "nats.password",
            ),
            (&[("SVC_NATS__TOKEN", "")], "nats.token"),
            (
                &[
                    ("SVC_NATS__USER", "u"),
                    ("SVC_NATS__PASSWORD", "CHANGE-ME-p-secret"),
                ],
                "nats.password",
            ),
            (&[("SVC_NATS__TOKEN", "change-me-t-secret")], "nats.token"),
            (
                &[("SVC_NATS__CREDENTIALS_FILE", "/etc/nats/service.creds")],
                "nats.credentials_file",
            ),
        ];
        for (pairs, key) in cases {
            let err = load_test(&env(pairs)).unwrap_err();
            assert_eq!(err.key, *key, "{pairs:?}: {err}");
            for (_, value) in *pairs {
                assert!(value.len() < 2 || !err.to_string().contains(value), "{err}");
            }
        }
    }
}
