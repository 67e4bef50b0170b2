//! From an endpoint's templates and the caller's params to a URL, query and headers.
//!
//! Templates name params as `{name}`. A param placed in the path is percent-encoded as one
//! path segment (every byte outside `A-Za-z0-9-._~`), so it cannot add `/`, `?` or `#`; a param
//! that is `.` or `..` (which URL parsers resolve, even encoded) is refused. In the query and in
//! header values a param is inserted as text (the URL library encodes the query; header values
//! are checked as header values).

use serde_json::{Map, Value};

use super::error::ExecError;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Param(String),
}

/// A `{name}` template, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

impl Template {
    /// Parses `raw`; an unclosed `{` is text.
    pub fn parse(raw: &str) -> Self {
        let mut pieces = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let name = &rest[open + 1..open + close];
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            pieces.push(Piece::Param(name.trim().to_owned()));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Self(pieces)
    }

    /// The params it names.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Param(name) => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// Whether it is exactly one param (`"{limit}"`): such a query or header entry is left out
    /// when the param is not given.
    fn single_param(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Piece::Param(name)] => Some(name),
            _ => None,
        }
    }

    /// Renders with `encode` applied to each param value.
    fn render(
        &self,
        params: &Map<String, Value>,
        encode: impl Fn(&str, &str) -> Result<String, ExecError>,
    ) -> Result<String, ExecError> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Param(name) => {
                    let value = scalar(params, name)?.ok_or_else(|| invalid(name))?;
                    out.push_str(&encode(name, &value)?);
                }
            }
        }
        Ok(out)
    }
}

fn invalid(name: &str) -> ExecError {
    ExecError::InvalidParams {
        field: format!("params.{name}"),
    }
}

/// The param as text: strings, numbers and booleans; `None` when absent or null; an error for
/// arrays and objects.
fn scalar(params: &Map<String, Value>, name: &str) -> Result<Option<String>, ExecError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(invalid(name)),
    }
}

/// Percent-encodes one path segment.
pub fn encode_segment(name: &str, value: &str) -> Result<String, ExecError> {
    if value.is_empty() || value == "." || value == ".." {
        return Err(invalid(name));
    }
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

/// An endpoint's request templates, parsed once when the integration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTemplate {
    /// Path below the base URL, e.g. `/users/{userId}/tweets`.
    pub path: Template,
    /// Query entries.
    pub query: Vec<(String, Template)>,
    /// Header entries.
    pub headers: Vec<(String, Template)>,
    /// Params that must be given even if no template names them.
    pub required: Vec<String>,
}

/// The rendered request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The full URL, query included.
    pub url: reqwest::Url,
    /// Header name/value pairs.
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
}

impl RequestTemplate {
    /// Renders against `base` and `params`. Required params and every param of the path must
    /// be given; a query or header entry that is one absent param is left out.
    pub fn render(
        &self,
        base: &reqwest::Url,
        params: &Map<String, Value>,
    ) -> Result<Rendered, ExecError> {
        for name in self
            .required
            .iter()
            .map(String::as_str)
            .chain(self.path.params())
        {
            scalar(params, name)?.ok_or_else(|| invalid(name))?;
        }
        let path = self.path.render(params, encode_segment)?;
        let joined = format!(
            "{}/{}",
            base.as_str()
                .split(['?', '#'])
                .next()
                .unwrap_or("")
                .trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        let mut url = reqwest::Url::parse(&joined).map_err(|_| ExecError::UnknownEndpoint)?;
        if url.origin() != base.origin() {
            return Err(ExecError::UnknownEndpoint);
        }
        {
            let mut pairs: Vec<(String, String)> = base
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            for (name, template) in &self.query {
                if let Some(only) = template.single_param()
                    && scalar(params, only)?.is_none()
                {
                    continue;
                }
                pairs.push((
                    name.clone(),
                    template.render(params, |_, v| Ok(v.to_owned()))?,
                ));
            }
            url.set_query(None);
            if !pairs.is_empty() {
                url.query_pairs_mut().extend_pairs(pairs);
            }
        }
        let mut headers = Vec::new();
        for (name, template) in &self.headers {
            if let Some(only) = template.single_param()
                && scalar(params, only)?.is_none()
            {
                continue;
            }
            let value = template.render(params, |_, v| Ok(v.to_owned()))?;
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ExecError::UnknownEndpoint)?;
            let param = template.params().next().unwrap_or("headers");
            let value =
                reqwest::header::HeaderValue::from_str(&value).map_err(|_| invalid(param))?;
            headers.push((name, value));
        }
        Ok(Rendered { url, headers })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn template(path: &str) -> RequestTemplate {
        RequestTemplate {
            path: Template::parse(path),
            query: vec![
                ("max_results".to_owned(), Template::parse("{max}")),
                ("fixed".to_owned(), Template::parse("yes")),
            ],
            headers: vec![("x-trace".to_owned(), Template::parse("t-{trace}"))],
            required: vec![],
        }
    }

    #[test]
    fn params_fill_path_query_and_headers() {
        let base = reqwest::Url::parse("https://api.example.com/2/").unwrap();
        let r = template("/users/{userId}/tweets")
            .render(
                &base,
                &params(json!({"userId": 123, "max": "5", "trace": "a"})),
            )
            .unwrap();
        assert_eq!(
            r.url.as_str(),
            "https://api.example.com/2/users/123/tweets?max_results=5&fixed=yes"
        );
        assert_eq!(r.headers[0].1, "t-a");
        let r = template("/users/{userId}")
            .render(&base, &params(json!({"userId": "1", "trace": "a"})))
            .unwrap();
        assert_eq!(
            r.url.as_str(),
            "https://api.example.com/2/users/1?fixed=yes"
        );
    }

    #[test]
    fn a_param_cannot_escape_its_segment() {
        let base = reqwest::Url::parse("https://api.example.com/v1").unwrap();
        let t = template("/users/{id}/x");
        let p = |v: &str| params(json!({"id": v, "trace": "t"}));
        let r = t.render(&base, &p("a/../b?c#d")).unwrap();
        assert_eq!(
            r.url.as_str(),
            "https://api.example.com/v1/users/a%2F..%2Fb%3Fc%23d/x?fixed=yes"
        );
        for bad in ["..", ".", ""] {
            assert_eq!(
                t.render(&base, &p(bad)).unwrap_err(),
                ExecError::InvalidParams {
                    field: "params.id".into()
                }
            );
        }
    }

    #[test]
    fn missing_or_structured_params_are_named() {
        let base = reqwest::Url::parse("https://api.example.com").unwrap();
        let t = template("/users/{userId}");
        for p in [
            json!({"trace": "t"}),
            json!({"userId": {"a": 1}, "trace": "t"}),
            json!({"userId": null}),
        ] {
            assert_eq!(
                t.render(&base, &params(p)).unwrap_err(),
                ExecError::InvalidParams {
                    field: "params.userId".into()
                }
            );
        }
        let mut required = template("/x");
        required.required.push("q".into());
        assert_eq!(
            required
                .render(&base, &params(json!({"trace": "t"})))
                .unwrap_err(),
            ExecError::InvalidParams {
                field: "params.q".into()
            }
        );
        // A header value with a newline cannot be sent.
        assert!(matches!(
            t.render(&base, &params(json!({"userId": "1", "trace": "a\nb"}))),
            Err(ExecError::InvalidParams { .. })
        ));
    }
}
