//! An integration, parsed once into types.
//!
//! The non-secret parts (`auth`, `endpoints`, `rate_limit`, `webhook`) are stored as the JSON
//! these types serialise to (camelCase, the REST API's spelling); the secret parts are one
//! [`Secrets`] object, encrypted ([`crate::crypto`]). Every leaf type validates itself when it
//! is deserialised, so a request body or a stored row that does not fit is refused with the
//! path of the field (`endpoints.getUserTweets.path`); rules that span fields are checked by
//! [`Integration::check`] and [`Endpoint::check`], which name the field the same way.
//!
//! Templates: a path, query value, header value or string inside a JSON body template may hold
//! `{param}` placeholders, filled from the caller's `params`. Placeholders of the path are
//! always required; `required` lists further params that must be given. A query parameter or
//! header whose template names a param the caller did not give is left out. Braces are always
//! placeholders: a template cannot contain a literal `{` or `}`.

use std::collections::BTreeMap;
use std::fmt;

use axum::http::HeaderName;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// Most endpoints an integration may define.
pub const MAX_ENDPOINTS: usize = 200;
/// Longest integration name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest base URL or endpoint path, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Most query parameters, headers or required params of one endpoint.
pub const MAX_ENTRIES: usize = 50;
/// Longest literal or template value (query, header, scope, …), in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Largest JSON body template, serialised.
pub const MAX_BODY_TEMPLATE_BYTES: usize = 64 * 1024;
/// Longest endpoint timeout a definition may ask for.
pub const MAX_TIMEOUT_MS: u64 = 300_000;
/// Largest webhook timestamp tolerance.
pub const MAX_TOLERANCE_SECONDS: u64 = 86_400;
/// The name of the endpoint `integration:test` runs.
pub const HEALTH_CHECK: &str = "healthCheck";

/// A field that is not what it must be: `field` is the path (`endpoints.x.path`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Dotted path of the field.
    pub field: String,
    /// What is wrong (never repeats a secret).
    pub message: String,
}

impl FieldError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error one level down: `prefix.field`.
    pub fn under(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// An integration or project id: 1 to 64 of `[A-Za-z0-9_-]` (the backend uses 24 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Id(String);

/// Why a string is not an [`Id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to 64 letters, digits, '_' or '-'")]
pub struct InvalidId;

impl Id {
    /// Checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        if (1..=64).contains(&raw.len()) && raw.chars().all(is_token_char) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidId)
        }
    }

    /// A fresh id: 24 hex digits, like the backend's.
    pub fn generate() -> Self {
        let uuid = uuid::Uuid::now_v7();
        let hex = uuid.simple().to_string();
        // The v7 layout puts the millisecond clock first and randomness last; keep 12 + 12.
        Self(format!("{}{}", &hex[..12], &hex[20..]))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Id {
    type Error = InvalidId;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Id> for String {
    fn from(id: Id) -> Self {
        id.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An endpoint name (`getUserTweets`) or param name (`userId`): 1 to 128 of
/// `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

/// Why a string is not a [`Name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to 128 letters, digits, '_', '.' or '-'")]
pub struct InvalidName;

impl Name {
    /// Checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidName> {
        if (1..=128).contains(&raw.len()) && raw.chars().all(|c| is_token_char(c) || c == '.') {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidName)
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = InvalidName;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of an endpoint.
pub type EndpointName = Name;

/// An absolute `http`/`https` URL with a host, without credentials, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpUrl(Url);

/// Why a string is not an [`HttpUrl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUrl {
    /// Longer than [`MAX_URL_BYTES`].
    #[error("is longer than 2048 bytes")]
    TooLong,
    /// Not an absolute URL.
    #[error("is not an absolute URL")]
    NotAbsolute,
    /// Not http or https.
    #[error("scheme must be http or https")]
    Scheme,
    /// No host.
    #[error("must have a host")]
    NoHost,
    /// `user:password@`.
    #[error("must not carry credentials")]
    Credentials,
    /// `?…` or `#…`.
    #[error("must not have a query or fragment")]
    QueryOrFragment,
}

impl HttpUrl {
    /// Checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidUrl> {
        if raw.len() > MAX_URL_BYTES {
            return Err(InvalidUrl::TooLong);
        }
        let url = Url::parse(raw.trim()).map_err(|_| InvalidUrl::NotAbsolute)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(InvalidUrl::Scheme);
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(InvalidUrl::NoHost);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidUrl::Credentials);
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(InvalidUrl::QueryOrFragment);
        }
        Ok(Self(url))
    }

    /// The URL.
    pub fn url(&self) -> &Url {
        &self.0
    }
}

impl TryFrom<String> for HttpUrl {
    type Error = InvalidUrl;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<HttpUrl> for String {
    fn from(u: HttpUrl) -> Self {
        u.0.into()
    }
}

/// One piece of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text sent as it is (a path's literal parts are sent as written).
    Literal(String),
    /// `{name}`: the value of param `name`.
    Param(Name),
}

/// A string with `{param}` placeholders, parsed at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
}

/// Why a string is not a [`Template`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTemplate {
    /// Longer than [`MAX_VALUE_BYTES`].
    #[error("is longer than 4096 bytes")]
    TooLong,
    /// A `{` without `}` or a `}` without `{`.
    #[error("has an unbalanced '{{' or '}}'")]
    Unbalanced,
    /// `{}` or `{not a name}`.
    #[error("has a placeholder that is not a param name")]
    BadParam,
    /// A control character (CR, LF, NUL, …).
    #[error("must not contain control characters")]
    Control,
}

impl Template {
    /// Parses `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidTemplate> {
        if raw.len() > MAX_VALUE_BYTES {
            return Err(InvalidTemplate::TooLong);
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidTemplate::Control);
        }
        let mut parts = Vec::new();
        let mut rest = raw;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => return Err(InvalidTemplate::Unbalanced),
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Literal(rest[..i].to_owned()));
                    }
                    let after = &rest[i + 1..];
                    let end = after.find('}').ok_or(InvalidTemplate::Unbalanced)?;
                    let name = &after[..end];
                    if name.contains('{') {
                        return Err(InvalidTemplate::Unbalanced);
                    }
                    parts.push(Part::Param(
                        Name::parse(name).map_err(|_| InvalidTemplate::BadParam)?,
                    ));
                    rest = &after[end + 1..];
                }
            }
        }
        Ok(Self {
            raw: raw.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Its pieces, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The params it names.
    pub fn params(&self) -> impl Iterator<Item = &Name> {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(n) => Some(n),
            Part::Literal(_) => None,
        })
    }

    /// `Some(name)` when the template is exactly one placeholder (`"{userId}"`).
    pub fn sole_param(&self) -> Option<&Name> {
        match self.parts.as_slice() {
            [Part::Param(n)] => Some(n),
            _ => None,
        }
    }

    /// Fills the placeholders: `value(name)` gives a param's text, already encoded as the
    /// place needs (percent-encoding for a path segment, none for a header). `None` when a
    /// named param has no value.
    pub fn render<'a>(&self, mut value: impl FnMut(&Name) -> Option<&'a str>) -> Option<String> {
        let mut out = String::with_capacity(self.raw.len());
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Param(n) => out.push_str(value(n)?),
            }
        }
        Some(out)
    }
}

impl TryFrom<String> for Template {
    type Error = InvalidTemplate;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Template> for String {
    fn from(t: Template) -> Self {
        t.raw
    }
}

/// The HTTP method of an endpoint (written upper case; lower case is accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
    /// HEAD.
    Head,
}

/// Why a string is not a [`Method`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be one of GET, POST, PUT, PATCH, DELETE, HEAD")]
pub struct InvalidMethod;

impl Method {
    /// Parses `GET`, `get`, ….
    pub fn parse(raw: &str) -> Result<Self, InvalidMethod> {
        Ok(match raw.to_ascii_uppercase().as_str() {
            "GET" => Self::Get,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            "DELETE" => Self::Delete,
            "HEAD" => Self::Head,
            _ => return Err(InvalidMethod),
        })
    }

    /// Upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Head => "HEAD",
        }
    }

    /// Whether HTTP calls the method idempotent (GET, HEAD, PUT, DELETE): such calls may be
    /// retried unless the endpoint says otherwise.
    pub fn is_idempotent(self) -> bool {
        matches!(self, Self::Get | Self::Head | Self::Put | Self::Delete)
    }

    /// As an `http` method.
    pub fn to_http(self) -> axum::http::Method {
        match self {
            Self::Get => axum::http::Method::GET,
            Self::Post => axum::http::Method::POST,
            Self::Put => axum::http::Method::PUT,
            Self::Patch => axum::http::Method::PATCH,
            Self::Delete => axum::http::Method::DELETE,
            Self::Head => axum::http::Method::HEAD,
        }
    }
}

impl TryFrom<String> for Method {
    type Error = InvalidMethod;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Method> for &'static str {
    fn from(m: Method) -> Self {
        m.as_str()
    }
}

/// A request header name an endpoint or auth may set; hop-by-hop and framing headers
/// (`Host`, `Content-Length`, `Transfer-Encoding`, `Connection`, …) are refused. Stored lower
/// case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderField(HeaderName);

/// Why a string is not a [`HeaderField`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHeader {
    /// Not an HTTP token.
    #[error("is not a valid header name")]
    Syntax,
    /// Set by the runner itself.
    #[error("is set by the runner and cannot be configured")]
    Reserved,
}

const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

impl HeaderField {
    /// Checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidHeader> {
        let name = HeaderName::from_bytes(raw.as_bytes()).map_err(|_| InvalidHeader::Syntax)?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(InvalidHeader::Reserved);
        }
        Ok(Self(name))
    }

    /// The header name.
    pub fn name(&self) -> &HeaderName {
        &self.0
    }
}

impl TryFrom<String> for HeaderField {
    type Error = InvalidHeader;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<HeaderField> for String {
    fn from(h: HeaderField) -> Self {
        h.0.as_str().to_owned()
    }
}

impl PartialOrd for HeaderField {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HeaderField {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_str().cmp(other.0.as_str())
    }
}

/// A JSON body template: every string in it is a [`Template`]; a string that is exactly one
/// placeholder (`"{count}"`) becomes the param's JSON value (a number stays a number), other
/// strings are filled as text. A placeholder whose param was not given becomes `null`.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonTemplate {
    /// `null`, a boolean or a number, sent as written.
    Literal(Value),
    /// A string template.
    String(Template),
    /// An array.
    Array(Vec<JsonTemplate>),
    /// An object; keys are literal.
    Object(BTreeMap<String, JsonTemplate>),
}

/// Why a JSON value is not a [`JsonTemplate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidJsonTemplate {
    /// Larger than [`MAX_BODY_TEMPLATE_BYTES`].
    #[error("is larger than 65536 bytes")]
    TooLarge,
    /// Deeper than 32 levels.
    #[error("is nested deeper than 32 levels")]
    TooDeep,
    /// A string is not a template.
    #[error("{path}: {why}")]
    String {
        /// Where in the template (`$.user.name`).
        path: String,
        /// Why.
        why: InvalidTemplate,
    },
}

impl JsonTemplate {
    /// Parses a JSON value.
    pub fn parse(value: &Value) -> Result<Self, InvalidJsonTemplate> {
        if serde_json::to_vec(value).map_or(usize::MAX, |v| v.len()) > MAX_BODY_TEMPLATE_BYTES {
            return Err(InvalidJsonTemplate::TooLarge);
        }
        Self::parse_at(value, "$", 0)
    }

    fn parse_at(value: &Value, path: &str, depth: usize) -> Result<Self, InvalidJsonTemplate> {
        if depth > 32 {
            return Err(InvalidJsonTemplate::TooDeep);
        }
        Ok(match value {
            Value::String(s) => {
                Self::String(
                    Template::parse(s).map_err(|why| InvalidJsonTemplate::String {
                        path: path.to_owned(),
                        why,
                    })?,
                )
            }
            Value::Array(items) => Self::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::parse_at(v, &format!("{path}[{i}]"), depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Self::Object(
                map.iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            Self::parse_at(v, &format!("{path}.{k}"), depth + 1)?,
                        ))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => Self::Literal(other.clone()),
        })
    }

    /// The template as JSON again.
    pub fn to_value(&self) -> Value {
        match self {
            Self::Literal(v) => v.clone(),
            Self::String(t) => Value::String(t.as_str().to_owned()),
            Self::Array(items) => Value::Array(items.iter().map(Self::to_value).collect()),
            Self::Object(map) => {
                Value::Object(map.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
            }
        }
    }

    /// Every param it names.
    pub fn params(&self) -> Vec<&Name> {
        let mut out = Vec::new();
        self.collect_params(&mut out);
        out
    }

    fn collect_params<'a>(&'a self, out: &mut Vec<&'a Name>) {
        match self {
            Self::Literal(_) => {}
            Self::String(t) => out.extend(t.params()),
            Self::Array(items) => items.iter().for_each(|i| i.collect_params(out)),
            Self::Object(map) => map.values().for_each(|v| v.collect_params(out)),
        }
    }

    /// The body, with params from `params` (scalars: strings, numbers, booleans).
    pub fn render(&self, params: &serde_json::Map<String, Value>) -> Value {
        match self {
            Self::Literal(v) => v.clone(),
            Self::String(t) => {
                if let Some(name) = t.sole_param() {
                    return params.get(name.as_str()).cloned().unwrap_or(Value::Null);
                }
                let mut out = String::new();
                for part in t.parts() {
                    match part {
                        Part::Literal(s) => out.push_str(s),
                        Part::Param(n) => match params.get(n.as_str()) {
                            Some(Value::String(s)) => out.push_str(s),
                            Some(other) => out.push_str(&other.to_string()),
                            None => {}
                        },
                    }
                }
                Value::String(out)
            }
            Self::Array(items) => Value::Array(items.iter().map(|i| i.render(params)).collect()),
            Self::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), v.render(params)))
                    .collect(),
            ),
        }
    }
}

/// What an endpoint sends as its request body.
///
/// JSON: absent, `null` or `"none"`: no body; `"requestData"`: the caller's `requestData`, as
/// JSON; `{"template": <json>}`: a [`JsonTemplate`] filled from `params`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum BodySpec {
    /// No body.
    #[default]
    None,
    /// The caller's `requestData`.
    RequestData,
    /// A JSON template.
    Template(JsonTemplate),
}

/// Why a value is not a [`BodySpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBody {
    /// Not one of the three shapes.
    #[error(r#"must be "none", "requestData" or {{"template": <json>}}"#)]
    Shape,
    /// The template does not parse.
    #[error("template: {0}")]
    Template(#[from] InvalidJsonTemplate),
}

impl TryFrom<Value> for BodySpec {
    type Error = InvalidBody;
    fn try_from(value: Value) -> Result<Self, Self::Error> {
        match value {
            Value::Null => Ok(Self::None),
            Value::String(s) if s == "none" => Ok(Self::None),
            Value::String(s) if s == "requestData" => Ok(Self::RequestData),
            Value::Object(mut map) if map.len() == 1 => match map.remove("template") {
                Some(t) => Ok(Self::Template(JsonTemplate::parse(&t)?)),
                None => Err(InvalidBody::Shape),
            },
            _ => Err(InvalidBody::Shape),
        }
    }
}

impl From<BodySpec> for Value {
    fn from(b: BodySpec) -> Self {
        match b {
            BodySpec::None => Value::String("none".to_owned()),
            BodySpec::RequestData => Value::String("requestData".to_owned()),
            BodySpec::Template(t) => serde_json::json!({"template": t.to_value()}),
        }
    }
}

/// One endpoint of an integration.
///
/// ```json
/// {"method": "GET", "path": "/2/users/{userId}/tweets",
///  "query": {"max_results": "{limit}", "expansions": "author_id"},
///  "headers": {"accept": "application/json"}, "body": "none",
///  "required": ["userId"], "idempotent": true, "timeoutMs": 10000}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// HTTP method.
    pub method: Method,
    /// Path template, appended to the base URL's path; starts with `/`, no `?` or `#`.
    pub path: Template,
    /// Query parameters: name → template or literal.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, Template>,
    /// Request headers: name → template or literal.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<HeaderField, Template>,
    /// Request body.
    #[serde(default)]
    pub body: BodySpec,
    /// Params that must be given, beside the path's placeholders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<Name>,
    /// Whether a failed call may be retried; unset: by method ([`Method::is_idempotent`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// This endpoint's deadline, if shorter than the execution's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl Endpoint {
    /// `GET /`: the health check of an integration that defines none.
    pub fn default_health_check() -> Self {
        Self {
            method: Method::Get,
            path: Template {
                raw: "/".to_owned(),
                parts: vec![Part::Literal("/".to_owned())],
            },
            query: BTreeMap::new(),
            headers: BTreeMap::new(),
            body: BodySpec::None,
            required: Vec::new(),
            idempotent: None,
            timeout_ms: None,
        }
    }

    /// Whether a failed call may be retried.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
            .unwrap_or_else(|| self.method.is_idempotent())
    }

    /// Every param that must be given: the path's placeholders, then `required`.
    pub fn required_params(&self) -> impl Iterator<Item = &Name> {
        self.path.params().chain(self.required.iter())
    }

    /// Rules beyond the types; the field is relative to the endpoint (`path`).
    pub fn check(&self) -> Result<(), FieldError> {
        let path = self.path.as_str();
        if !path.starts_with('/') {
            return Err(FieldError::new("path", "must start with '/'"));
        }
        if path.len() > MAX_URL_BYTES {
            return Err(FieldError::new("path", "is longer than 2048 bytes"));
        }
        if path.contains(['?', '#', ' ']) {
            return Err(FieldError::new(
                "path",
                "must not contain '?', '#' or spaces (put query parameters in `query`)",
            ));
        }
        for (field, len) in [
            ("query", self.query.len()),
            ("headers", self.headers.len()),
            ("required", self.required.len()),
        ] {
            if len > MAX_ENTRIES {
                return Err(FieldError::new(field, "has more than 50 entries"));
            }
        }
        for name in self.query.keys() {
            if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
                return Err(FieldError::new(
                    format!("query.{name}"),
                    "a query parameter name is 1 to 256 characters, no control characters",
                ));
            }
        }
        if let Some(ms) = self.timeout_ms
            && !(1..=MAX_TIMEOUT_MS).contains(&ms)
        {
            return Err(FieldError::new("timeoutMs", "must be 1 to 300000"));
        }
        if matches!(self.method, Method::Get | Method::Head) && self.body != BodySpec::None {
            return Err(FieldError::new(
                "body",
                "GET and HEAD requests send no body",
            ));
        }
        Ok(())
    }
}

/// A configured request budget: `requests` per `per_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests allowed per window (1 to 1 000 000).
    pub requests: u32,
    /// The window, in seconds (1 to 86 400).
    pub per_seconds: u32,
}

impl RateLimitSpec {
    /// Bounds; the field is relative (`requests`).
    pub fn check(&self) -> Result<(), FieldError> {
        if !(1..=1_000_000).contains(&self.requests) {
            return Err(FieldError::new("requests", "must be 1 to 1000000"));
        }
        if !(1..=86_400).contains(&self.per_seconds) {
            return Err(FieldError::new("perSeconds", "must be 1 to 86400"));
        }
        Ok(())
    }
}

/// How the MAC of a configured HMAC header is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacEncoding {
    /// Hex.
    #[default]
    Hex,
    /// Standard base64.
    Base64,
}

/// Where a configured-HMAC provider names the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventLocation {
    /// A JSON body field; dots descend (`event.type`).
    Field(String),
    /// A request header.
    Header(HeaderName),
}

/// How inbound webhooks of an integration are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookScheme {
    /// `Stripe-Signature`.
    Stripe,
    /// `X-Hub-Signature-256`.
    Github,
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    StandardWebhooks,
    /// HMAC-SHA256 of the body in one header.
    Hmac {
        /// The header carrying the MAC.
        header: HeaderName,
        /// Text before the MAC (`sha256=`).
        prefix: Option<String>,
        /// Hex or base64.
        encoding: MacEncoding,
        /// Where the event name is.
        event: EventLocation,
    },
}

/// The non-secret webhook settings; the signing secret is in [`Secrets::webhook`].
///
/// JSON: `{"scheme": "stripe" | "github" | "standard_webhooks" | "hmac", "toleranceSeconds":
/// 300}`; `hmac` adds `header`, optional `prefix`, `encoding` (`hex`, default, or `base64`),
/// and exactly one of `eventField` or `eventHeader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WebhookRepr", into = "WebhookRepr")]
pub struct WebhookSpec {
    /// Signature scheme.
    pub scheme: WebhookScheme,
    /// Accepted distance between a signed timestamp and now (schemes that sign one).
    pub tolerance_seconds: u64,
}

/// Default [`WebhookSpec::tolerance_seconds`].
pub const DEFAULT_TOLERANCE_SECONDS: u64 = 300;

/// The flat JSON shape of [`WebhookSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookRepr {
    /// `stripe`, `github`, `standard_webhooks` or `hmac`.
    pub scheme: String,
    /// hmac: the signature header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// hmac: text before the MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// hmac: `hex` or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<MacEncoding>,
    /// hmac: the body field naming the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_field: Option<String>,
    /// hmac: the header naming the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_header: Option<String>,
    /// Seconds; default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance_seconds: Option<u64>,
}

impl WebhookSpec {
    /// From the flat shape; the field is relative (`header`).
    pub fn from_repr(r: WebhookRepr) -> Result<Self, FieldError> {
        let tolerance_seconds = r.tolerance_seconds.unwrap_or(DEFAULT_TOLERANCE_SECONDS);
        if !(1..=MAX_TOLERANCE_SECONDS).contains(&tolerance_seconds) {
            return Err(FieldError::new("toleranceSeconds", "must be 1 to 86400"));
        }
        let simple = |scheme| {
            for (field, set) in [
                ("header", r.header.is_some()),
                ("prefix", r.prefix.is_some()),
                ("encoding", r.encoding.is_some()),
                ("eventField", r.event_field.is_some()),
                ("eventHeader", r.event_header.is_some()),
            ] {
                if set {
                    return Err(FieldError::new(field, "is only for the hmac scheme"));
                }
            }
            Ok(scheme)
        };
        let scheme = match r.scheme.as_str() {
            "stripe" => simple(WebhookScheme::Stripe)?,
            "github" => simple(WebhookScheme::Github)?,
            "standard_webhooks" => simple(WebhookScheme::StandardWebhooks)?,
            "hmac" => {
                let header = r
                    .header
                    .as_deref()
                    .ok_or_else(|| FieldError::new("header", "is required for the hmac scheme"))?;
                let header = HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| FieldError::new("header", "is not a valid header name"))?;
                if let Some(p) = &r.prefix
                    && (p.len() > 64 || p.chars().any(char::is_control))
                {
                    return Err(FieldError::new(
                        "prefix",
                        "is at most 64 printable characters",
                    ));
                }
                let event = match (r.event_field, r.event_header) {
                    (Some(f), None) => {
                        if f.is_empty() || f.len() > 256 || f.split('.').any(str::is_empty) {
                            return Err(FieldError::new(
                                "eventField",
                                "must be a dotted field path (`type`, `event.type`)",
                            ));
                        }
                        EventLocation::Field(f)
                    }
                    (None, Some(h)) => {
                        EventLocation::Header(HeaderName::from_bytes(h.as_bytes()).map_err(
                            |_| FieldError::new("eventHeader", "is not a valid header name"),
                        )?)
                    }
                    _ => {
                        return Err(FieldError::new(
                            "eventField",
                            "give exactly one of eventField or eventHeader",
                        ));
                    }
                };
                WebhookScheme::Hmac {
                    header,
                    prefix: r.prefix.filter(|p| !p.is_empty()),
                    encoding: r.encoding.unwrap_or_default(),
                    event,
                }
            }
            _ => {
                return Err(FieldError::new(
                    "scheme",
                    "must be stripe, github, standard_webhooks or hmac",
                ));
            }
        };
        Ok(Self {
            scheme,
            tolerance_seconds,
        })
    }
}

impl TryFrom<WebhookRepr> for WebhookSpec {
    type Error = FieldError;
    fn try_from(r: WebhookRepr) -> Result<Self, Self::Error> {
        Self::from_repr(r)
    }
}

impl From<WebhookSpec> for WebhookRepr {
    fn from(w: WebhookSpec) -> Self {
        let mut r = WebhookRepr {
            tolerance_seconds: Some(w.tolerance_seconds),
            ..WebhookRepr::default()
        };
        r.scheme = match w.scheme {
            WebhookScheme::Stripe => "stripe",
            WebhookScheme::Github => "github",
            WebhookScheme::StandardWebhooks => "standard_webhooks",
            WebhookScheme::Hmac {
                header,
                prefix,
                encoding,
                event,
            } => {
                r.header = Some(header.as_str().to_owned());
                r.prefix = prefix;
                r.encoding = Some(encoding);
                match event {
                    EventLocation::Field(f) => r.event_field = Some(f),
                    EventLocation::Header(h) => r.event_header = Some(h.as_str().to_owned()),
                }
                "hmac"
            }
        }
        .to_owned();
        r
    }
}

/// How calls authenticate to the third party (non-secret part).
///
/// JSON: `{"type": "none"}`, `{"type": "bearer"}`, `{"type": "header", "name": "X-Api-Key"}`,
/// `{"type": "query", "name": "api_key"}`, `{"type": "basic", "username": "me"}`,
/// `{"type": "oauth2_client_credentials", "tokenUrl": "https://…", "scope"?, "audience"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuthSpec {
    /// No credentials.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `<name>: <value>`.
    Header {
        /// The header.
        name: HeaderField,
    },
    /// `?<name>=<value>`.
    Query {
        /// The query parameter.
        name: String,
    },
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// The user name.
        username: String,
    },
    /// A token from `token_url` (client credentials grant), sent as a bearer token.
    #[serde(rename_all = "camelCase")]
    Oauth2ClientCredentials {
        /// The token endpoint.
        token_url: HttpUrl,
        /// `scope`, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// `audience`, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audience: Option<String>,
    },
}

impl AuthSpec {
    /// Bounds; the field is relative (`name`).
    pub fn check(&self) -> Result<(), FieldError> {
        let bounded = |field: &str, v: &str, min: usize| {
            if v.len() < min || v.len() > 256 || v.chars().any(char::is_control) {
                Err(FieldError::new(
                    field,
                    format!("must be {min} to 256 characters, no control characters"),
                ))
            } else {
                Ok(())
            }
        };
        match self {
            Self::None | Self::Bearer | Self::Header { .. } => Ok(()),
            Self::Query { name } => bounded("name", name, 1),
            Self::Basic { username } => {
                bounded("username", username, 0)?;
                if username.contains(':') {
                    return Err(FieldError::new("username", "must not contain ':'"));
                }
                Ok(())
            }
            Self::Oauth2ClientCredentials {
                scope, audience, ..
            } => {
                bounded("scope", scope.as_deref().unwrap_or(""), 0)?;
                bounded("audience", audience.as_deref().unwrap_or(""), 0)
            }
        }
    }

    /// The kind of secret this auth needs, `None` for [`AuthSpec::None`].
    pub fn secret_kind(&self) -> Option<AuthSecretKind> {
        Some(match self {
            Self::None => return None,
            Self::Bearer => AuthSecretKind::Token,
            Self::Header { .. } | Self::Query { .. } => AuthSecretKind::Value,
            Self::Basic { .. } => AuthSecretKind::Password,
            Self::Oauth2ClientCredentials { .. } => AuthSecretKind::ClientCredentials,
        })
    }
}

/// A secret string: `Debug` never shows it; kept out of every API response by construction
/// (only [`Secrets`] holds it, and only [`crate::crypto`] serialises that).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps `s`.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// The kinds of auth secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSecretKind {
    /// `token`.
    Token,
    /// `value`.
    Value,
    /// `password`.
    Password,
    /// `clientId` + `clientSecret`.
    ClientCredentials,
}

/// The secret of an [`AuthSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthSecret {
    /// Bearer token.
    Token {
        /// The token.
        token: SecretString,
    },
    /// Header or query value (an API key).
    Value {
        /// The value.
        value: SecretString,
    },
    /// Basic password.
    Password {
        /// The password.
        password: SecretString,
    },
    /// OAuth2 client credentials.
    ClientCredentials {
        /// `client_id`.
        client_id: SecretString,
        /// `client_secret`.
        client_secret: SecretString,
    },
}

impl AuthSecret {
    /// Its kind.
    pub fn kind(&self) -> AuthSecretKind {
        match self {
            Self::Token { .. } => AuthSecretKind::Token,
            Self::Value { .. } => AuthSecretKind::Value,
            Self::Password { .. } => AuthSecretKind::Password,
            Self::ClientCredentials { .. } => AuthSecretKind::ClientCredentials,
        }
    }
}

/// Every secret of an integration: encrypted as one JSON object into the `secrets` column.
/// `Debug` shows which secrets are set, never their values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secrets {
    /// The auth secret, if the auth needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSecret>,
    /// The webhook signing secret, if webhooks are configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<SecretString>,
}

impl Secrets {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.auth.is_none() && self.webhook.is_none()
    }
}

/// The credentials a call uses, resolved from an integration's [`AuthSpec`] and [`Secrets`].
#[derive(Debug, Clone, Copy)]
pub enum Credentials<'a> {
    /// Nothing.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
    /// A header.
    Header {
        /// Name.
        name: &'a HeaderName,
        /// Value.
        value: &'a str,
    },
    /// A query parameter.
    Query {
        /// Name.
        name: &'a str,
        /// Value.
        value: &'a str,
    },
    /// Basic auth.
    Basic {
        /// User.
        username: &'a str,
        /// Password.
        password: &'a str,
    },
    /// OAuth2 client credentials grant.
    OAuth2 {
        /// Token endpoint.
        token_url: &'a Url,
        /// Scope.
        scope: Option<&'a str>,
        /// Audience.
        audience: Option<&'a str>,
        /// Client id.
        client_id: &'a str,
        /// Client secret.
        client_secret: &'a str,
    },
}

/// The stored secrets do not fit the auth (a row written by hand, or a bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stored credentials do not match the auth type")]
pub struct CredentialsMismatch;

/// An integration.
#[derive(Debug, Clone, PartialEq)]
pub struct Integration {
    /// Id (the backend's).
    pub id: Id,
    /// The project it belongs to.
    pub project_id: Id,
    /// Provider, lower case (`stripe`): the first part of webhook event names.
    pub provider: String,
    /// Display name.
    pub name: String,
    /// Where endpoint paths are appended.
    pub base_url: HttpUrl,
    /// How calls authenticate.
    pub auth: AuthSpec,
    /// Endpoints by name.
    pub endpoints: BTreeMap<EndpointName, Endpoint>,
    /// Configured rate limit.
    pub rate_limit: Option<RateLimitSpec>,
    /// Inbound webhook settings.
    pub webhook: Option<WebhookSpec>,
    /// Whether it may be executed.
    pub is_active: bool,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last changed.
    pub updated_at: OffsetDateTime,
    /// Last executed.
    pub last_used_at: Option<OffsetDateTime>,
}

impl Integration {
    /// The endpoint `name`; `healthCheck` falls back to [`Endpoint::default_health_check`]
    /// (`GET /`) when the integration defines none.
    pub fn endpoint(&self, name: &str) -> Option<std::borrow::Cow<'_, Endpoint>> {
        match self.endpoints.get(name) {
            Some(e) => Some(std::borrow::Cow::Borrowed(e)),
            None if name == HEALTH_CHECK => {
                Some(std::borrow::Cow::Owned(Endpoint::default_health_check()))
            }
            None => None,
        }
    }

    /// The credentials a call sends.
    pub fn credentials<'a>(
        &'a self,
        secrets: &'a Secrets,
    ) -> Result<Credentials<'a>, CredentialsMismatch> {
        Ok(match (&self.auth, &secrets.auth) {
            (AuthSpec::None, _) => Credentials::None,
            (AuthSpec::Bearer, Some(AuthSecret::Token { token })) => {
                Credentials::Bearer(token.expose())
            }
            (AuthSpec::Header { name }, Some(AuthSecret::Value { value })) => Credentials::Header {
                name: name.name(),
                value: value.expose(),
            },
            (AuthSpec::Query { name }, Some(AuthSecret::Value { value })) => Credentials::Query {
                name,
                value: value.expose(),
            },
            (AuthSpec::Basic { username }, Some(AuthSecret::Password { password })) => {
                Credentials::Basic {
                    username,
                    password: password.expose(),
                }
            }
            (
                AuthSpec::Oauth2ClientCredentials {
                    token_url,
                    scope,
                    audience,
                },
                Some(AuthSecret::ClientCredentials {
                    client_id,
                    client_secret,
                }),
            ) => Credentials::OAuth2 {
                token_url: token_url.url(),
                scope: scope.as_deref(),
                audience: audience.as_deref(),
                client_id: client_id.expose(),
                client_secret: client_secret.expose(),
            },
            _ => return Err(CredentialsMismatch),
        })
    }
}

/// Checks the name, provider, endpoints, auth, rate limit and webhook of an integration
/// being created or changed; fields are named from the body's root (`endpoints.x.path`).
pub fn check_parts(
    name: &str,
    provider: &str,
    auth: &AuthSpec,
    endpoints: &BTreeMap<EndpointName, Endpoint>,
    rate_limit: Option<&RateLimitSpec>,
) -> Result<(), FieldError> {
    check_name(name)?;
    check_provider(provider)?;
    auth.check().map_err(|e| e.under("auth"))?;
    check_endpoints(endpoints)?;
    if let Some(r) = rate_limit {
        r.check().map_err(|e| e.under("rateLimit"))?;
    }
    Ok(())
}

/// `name`: 1 to [`MAX_NAME_CHARS`] characters, no control characters.
pub fn check_name(name: &str) -> Result<(), FieldError> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(FieldError::new(
            "name",
            "must be 1 to 200 characters, no control characters",
        ));
    }
    Ok(())
}

/// `provider`: 1 to 64 of `[a-z0-9_.-]` (lower case).
pub fn check_provider(provider: &str) -> Result<(), FieldError> {
    if !(1..=64).contains(&provider.len())
        || !provider
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
    {
        return Err(FieldError::new(
            "provider",
            "must be 1 to 64 lower-case letters, digits, '_', '.' or '-'",
        ));
    }
    Ok(())
}

/// At most [`MAX_ENDPOINTS`], each [`Endpoint::check`]ed.
pub fn check_endpoints(endpoints: &BTreeMap<EndpointName, Endpoint>) -> Result<(), FieldError> {
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(FieldError::new("endpoints", "has more than 200 endpoints"));
    }
    for (name, endpoint) in endpoints {
        endpoint
            .check()
            .map_err(|e| e.under(&format!("endpoints.{name}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn templates_parse_into_parts() {
        let t = Template::parse("/2/users/{userId}/tweets").unwrap();
        assert_eq!(
            t.parts(),
            &[
                Part::Literal("/2/users/".into()),
                Part::Param(Name::parse("userId").unwrap()),
                Part::Literal("/tweets".into()),
            ]
        );
        assert_eq!(
            t.render(|n| (n.as_str() == "userId").then_some("123")),
            Some("/2/users/123/tweets".to_owned())
        );
        assert_eq!(t.render(|_| None), None);
        assert_eq!(
            Template::parse("{limit}")
                .unwrap()
                .sole_param()
                .unwrap()
                .as_str(),
            "limit"
        );
        for bad in ["/a/{", "/a/}", "/{}", "/{a b}", "/{{a}}", "x\ny"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_round_trip_and_name_fields() {
        let raw = json!({"method": "get", "path": "/2/users/{userId}/tweets",
            "query": {"max_results": "{limit}", "expansions": "author_id"},
            "headers": {"Accept": "application/json"}, "required": ["userId"]});
        let e: Endpoint = serde_json::from_value(raw).unwrap();
        assert_eq!(e.method, Method::Get);
        assert!(e.is_idempotent());
        assert_eq!(e.body, BodySpec::None);
        let back: Endpoint = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(back, e);

        let err = serde_path_to_error::deserialize::<_, BTreeMap<Name, Endpoint>>(
            json!({"x": {"method": "GET", "path": "/{a"}}),
        )
        .unwrap_err();
        assert_eq!(err.path().to_string(), "x.path");
        let err = serde_path_to_error::deserialize::<_, Endpoint>(
            json!({"method": "GET", "path": "/", "headers": {"Host": "x"}}),
        )
        .unwrap_err();
        assert_eq!(err.path().to_string(), "headers.Host");

        let mut map = BTreeMap::new();
        map.insert(
            Name::parse("x").unwrap(),
            serde_json::from_value(json!({"method": "GET", "path": "no-slash"})).unwrap(),
        );
        assert_eq!(check_endpoints(&map).unwrap_err().field, "endpoints.x.path");
    }

    #[test]
    fn bodies_have_three_shapes() {
        let b: BodySpec = serde_json::from_value(json!("requestData")).unwrap();
        assert_eq!(b, BodySpec::RequestData);
        let b: BodySpec = serde_json::from_value(
            json!({"template": {"n": "{count}", "s": "hi {name}", "k": [1]}}),
        )
        .unwrap();
        let BodySpec::Template(t) = &b else { panic!() };
        let params = json!({"count": 3, "name": "bo"});
        assert_eq!(
            t.render(params.as_object().unwrap()),
            json!({"n": 3, "s": "hi bo", "k": [1]})
        );
        assert!(serde_json::from_value::<BodySpec>(json!(5)).is_err());
        let again: BodySpec = serde_json::from_value(serde_json::to_value(&b).unwrap()).unwrap();
        assert_eq!(again, b);
    }

    #[test]
    fn auth_specs_are_tagged() {
        let a: AuthSpec = serde_json::from_value(json!({"type": "oauth2_client_credentials",
            "tokenUrl": "https://auth.example.com/token", "scope": "read"}))
        .unwrap();
        assert_eq!(a.secret_kind(), Some(AuthSecretKind::ClientCredentials));
        assert_eq!(
            serde_json::to_value(&a).unwrap()["tokenUrl"],
            "https://auth.example.com/token"
        );
        assert!(serde_json::from_value::<AuthSpec>(json!({"type": "magic"})).is_err());
    }

    #[test]
    fn webhook_specs_check_across_fields() {
        let w: WebhookSpec = serde_json::from_value(json!({"scheme": "hmac",
            "header": "X-Signature", "prefix": "sha256=", "eventField": "event.type"}))
        .unwrap();
        assert!(matches!(
            w.scheme,
            WebhookScheme::Hmac {
                encoding: MacEncoding::Hex,
                ..
            }
        ));
        assert_eq!(w.tolerance_seconds, DEFAULT_TOLERANCE_SECONDS);
        let back: WebhookSpec = serde_json::from_value(serde_json::to_value(&w).unwrap()).unwrap();
        assert_eq!(back, w);
        let err = WebhookSpec::from_repr(WebhookRepr {
            scheme: "hmac".into(),
            header: Some("X-Sig".into()),
            ..WebhookRepr::default()
        })
        .unwrap_err();
        assert_eq!(err.field, "eventField");
        let err = WebhookSpec::from_repr(WebhookRepr {
            scheme: "stripe".into(),
            header: Some("X-Sig".into()),
            ..WebhookRepr::default()
        })
        .unwrap_err();
        assert_eq!(err.field, "header");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Secrets {
            auth: Some(AuthSecret::Token {
                token: SecretString::new("tok-123"),
            }),
            webhook: Some(SecretString::new("whsec-456")),
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("tok-123") && !shown.contains("whsec-456"),
            "{shown}"
        );
    }

    #[test]
    fn ids_are_bounded_and_generated_ids_fit() {
        assert!(Id::parse("64b2c3d4e5f6789012345678").is_ok());
        assert!(Id::parse("").is_err());
        assert!(Id::parse("a/b").is_err());
        assert!(Id::parse(&"a".repeat(65)).is_err());
        let g = Id::generate();
        assert_eq!(g.as_str().len(), 24);
        assert_ne!(g, Id::generate());
    }

    #[test]
    fn base_urls_are_http_without_credentials() {
        assert!(HttpUrl::parse("https://api.twitter.com").is_ok());
        assert_eq!(HttpUrl::parse("ftp://x").unwrap_err(), InvalidUrl::Scheme);
        assert_eq!(
            HttpUrl::parse("not a url").unwrap_err(),
            InvalidUrl::NotAbsolute
        );
        assert_eq!(
            HttpUrl::parse("https://u:p@x.com").unwrap_err(),
            InvalidUrl::Credentials
        );
        assert_eq!(
            HttpUrl::parse("https://x.com/?a=1").unwrap_err(),
            InvalidUrl::QueryOrFragment
        );
    }
}
