//! A NATS server with the shipped authorization, clients as its users, and what the server
//! refused.

use std::time::Duration;

use deploy_tests::{Operation, Violation, authorization_file, password_variables, violations};
use test_support::{NatsServer, eventually};

/// A private `nats-server` (JetStream) that includes `k8s/base/nats/authorization.conf`
/// unchanged; every `$NATS_PASSWORD_<USER>` it refers to gets a test value.
pub struct AuthNats {
    pub server: NatsServer,
    passwords: Vec<(String, String)>,
}

impl AuthNats {
    pub fn start() -> Self {
        let file = authorization_file();
        let conf = std::fs::read_to_string(&file).unwrap();
        let passwords: Vec<(String, String)> = password_variables(&conf)
            .into_iter()
            .map(|var| {
                let password = format!("test-{}-0d5c9e", var.to_ascii_lowercase());
                (var, password)
            })
            .collect();
        let env: Vec<(&str, &str)> = passwords
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Self {
            server: NatsServer::start_with_include(&file, &env),
            passwords,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The test password of `user` (`gateway-ws` → `$NATS_PASSWORD_GATEWAY_WS`).
    pub fn password(&self, user: &str) -> String {
        let var = format!(
            "NATS_PASSWORD_{}",
            user.to_ascii_uppercase().replace('-', "_")
        );
        self.passwords
            .iter()
            .find(|(k, _)| *k == var)
            .unwrap_or_else(|| panic!("the shipped authorization has no {var}"))
            .1
            .clone()
    }

    /// `<prefix>NATS__URL`, `<prefix>NATS__USER`, `<prefix>NATS__PASSWORD` for a service
    /// connecting as `user`, as the manifests set them.
    pub fn service_env(&self, prefix: &str, user: &str) -> Vec<(String, String)> {
        vec![
            (format!("{prefix}NATS__URL"), self.url()),
            (format!("{prefix}NATS__USER"), user.to_owned()),
            (format!("{prefix}NATS__PASSWORD"), self.password(user)),
        ]
    }

    /// A client as `user`. Service users get their service's inbox prefix (the only inbox
    /// they may subscribe to), `backend` and `admin` the default one.
    pub async fn client(&self, user: &str) -> async_nats::Client {
        let mut options = async_nats::ConnectOptions::with_user_and_password(
            user.to_owned(),
            self.password(user),
        );
        if !matches!(user, "backend" | "admin") {
            options = options.custom_inbox_prefix(service_runtime::nats::inbox_prefix(user));
        }
        options.connect(self.url()).await.unwrap()
    }

    /// Every permission violation the server logged so far.
    pub fn violations(&self) -> Vec<Violation> {
        violations(&self.server.log())
    }

    /// Publishes as `user` where it may not, and waits until the server logs the refusal.
    pub async fn publish_refused(&self, client: &async_nats::Client, user: &str, subject: &str) {
        client
            .publish(subject.to_owned(), "{}".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        self.wait_refused(user, Operation::Publish, subject).await;
    }

    /// Subscribes as `user` where it may not, and waits until the server logs the refusal.
    pub async fn subscribe_refused(&self, client: &async_nats::Client, user: &str, subject: &str) {
        // The client learns of the refusal asynchronously; the subscription just stays empty.
        let _sub = client.subscribe(subject.to_owned()).await.unwrap();
        client.flush().await.unwrap();
        self.wait_refused(user, Operation::Subscribe, subject).await;
    }

    async fn wait_refused(&self, user: &str, operation: Operation, subject: &str) {
        let want = Violation {
            user: user.to_owned(),
            operation,
            subject: subject.to_owned(),
        };
        eventually(&format!("the server refusing {want:?}"), || async {
            self.violations().contains(&want).then_some(())
        })
        .await;
    }

    /// Fails unless every violation logged is one of `expected` (the deliberate ones): the
    /// services' own work needed nothing the shipped permissions refuse.
    pub fn assert_only_refused(&self, expected: &[(&str, &str)]) {
        let unexpected: Vec<Violation> = self
            .violations()
            .into_iter()
            .filter(|v| !expected.contains(&(v.user.as_str(), v.subject.as_str())))
            .collect();
        assert!(
            unexpected.is_empty(),
            "the shipped permissions refused what a service needs: {unexpected:#?}"
        );
    }
}

impl Drop for AuthNats {
    fn drop(&mut self) {
        // A path that failed because of a refusal says so.
        if std::thread::panicking() {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("violations logged by nats-server: {:#?}", self.violations());
            }
        }
    }
}

/// How long a request to a service may take in these tests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
