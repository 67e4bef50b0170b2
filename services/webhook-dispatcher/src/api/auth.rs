//! API authentication: `Authorization: Bearer <api key or admin JWT>`, shared by every
//! REST API of the platform ([`service_runtime::http_api`]).

pub use service_runtime::http_api::{Authenticator, require};
