//! Where the token may be sent.

use http::request::Parts;
use http::uri::Scheme;
use http::{HeaderValue, Uri};

/// One base URI the token may be sent to: scheme (when given), host, port (when not given, the
/// default port of the scheme) and path prefix.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    scheme: Option<Scheme>,
    host: Option<String>,
    port: Option<u16>,
    path: String,
}

fn default_port(scheme: Option<&Scheme>) -> Option<u16> {
    match scheme {
        Some(s) if *s == Scheme::HTTPS => Some(443),
        Some(s) if *s == Scheme::HTTP => Some(80),
        _ => None,
    }
}

impl Scope {
    pub(crate) fn new(base: &Uri) -> Self {
        Scope {
            scheme: base.scheme().cloned(),
            port: base.port_u16(),
            host: base.host().map(str::to_ascii_lowercase),
            path: base.path().trim_end_matches('/').to_owned(),
        }
    }

    /// Whether a request to `parts.uri` is inside this scope. A request without an authority
    /// is judged by its `Host` header, and, without one either, by its path alone: the service
    /// below decides the host then.
    pub(crate) fn contains(&self, parts: &Parts) -> bool {
        let uri = &parts.uri;
        if let (Some(want), Some(got)) = (&self.scheme, uri.scheme())
            && want != got
        {
            return false;
        }
        let scheme = uri.scheme().or(self.scheme.as_ref());
        let authority = match uri.authority() {
            Some(authority) => Some((authority.host().to_owned(), authority.port_u16())),
            None => parts.headers.get(http::header::HOST).and_then(host_header),
        };
        if let (Some(want), Some((host, port))) = (&self.host, authority) {
            if !host.eq_ignore_ascii_case(want) {
                return false;
            }
            // Without an explicit port on either side, the scheme's default port is meant.
            if port.or_else(|| default_port(scheme)) != self.port.or_else(|| default_port(scheme)) {
                return false;
            }
        }
        let path = uri.path();
        self.path.is_empty()
            || path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

fn host_header(value: &HeaderValue) -> Option<(String, Option<u16>)> {
    let authority: http::uri::Authority = value.to_str().ok()?.parse().ok()?;
    Some((authority.host().to_owned(), authority.port_u16()))
}
