//! Outbound HTTP proxies for the default leaf: `HTTPS_PROXY` and its kin, or a URL of your own.
//!
//! A host whose connections must go through a proxy is reached through an HTTP `CONNECT`
//! tunnel: the TLS session is end to end, from the client to the API through the tunnel, so
//! the proxy sees the host's name and port and nothing else. The proxy's user and password,
//! when its URL has them, go in the `CONNECT` request's `Proxy-Authorization` header (Basic),
//! never in a log or a `Debug` output.
//!
//! Which connections go through it, by default ([`Proxy::from_env`]), as curl reads the same
//! variables (lower case first, an empty one as unset): a `https://` host through `https_proxy`
//! (or `HTTPS_PROXY`), a `http://` host through `http_proxy` (never `HTTP_PROXY` in upper case,
//! which a CGI program gets from a request's `Proxy:` header), either through `all_proxy` (or
//! `ALL_PROXY`) when its own is not set, except the hosts `no_proxy` (or `NO_PROXY`) lists:
//! names, which cover their subdomains (`corp.example`, `.corp.example` or `*.corp.example`),
//! addresses, networks such as `10.0.0.0/8`, or `*` for every host; a port written after an
//! entry is left out. A loopback host (`localhost`, `127.0.0.0/8`, `::1`) is never reached
//! through a proxy: a proxy elsewhere would reach its own.
//!
//! A tunnel the proxy refuses (a 4xx answer but 408 and 429: 403 for a host or port it does not
//! allow, 407 for missing or wrong credentials) is a final failure, never asked again: a proxy may lock an
//! account after a few wrong passwords. The connection to the proxy and its answer share the
//! connect timeout; past it, the connection failed and nothing was sent. A `http://` host goes
//! through a `CONNECT` tunnel too, to its port 80, which some proxies allow only to 443.
//!
//! Only `http://` proxy URLs are supported (a URL without a scheme is taken as one), with the
//! user and password percent-encoded. Any other (`https://`, `socks5://`) is refused when the
//! client is built, saying which variable holds it, rather than ignored: a client that ignored
//! it would try to connect directly, which the network that set a proxy usually forbids. Only a
//! variable that applies is checked: a `socks5://` `all_proxy` beside an `https_proxy` and an
//! `http_proxy` is left alone.
//!
//! ```
//! use genesys_client::proxy::Proxy;
//! // Every host through one proxy, but the ones under example.internal.
//! let proxy = Proxy::url("http://user:secret@proxy.example:3128").no_proxy("example.internal");
//! assert!(!format!("{proxy:?}").contains("secret"));
//! ```

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::BoxError;
use crate::error::GenesysError;

/// The proxy variables, in the order curl looks for them: lower case first. `HTTP_PROXY` in
/// upper case is never read: a CGI program gets it from a request's `Proxy:` header.
const ALL: &[&str] = &["all_proxy", "ALL_PROXY"];
const HTTPS: &[&str] = &["https_proxy", "HTTPS_PROXY"];
const HTTP: &[&str] = &["http_proxy"];
const NO: &[&str] = &["no_proxy", "NO_PROXY"];

/// Which proxy the default leaf connects through; see the [module docs](self).
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy(Kind);

#[derive(Clone, PartialEq, Eq)]
enum Kind {
    /// The variables, read when the client is built.
    Env,
    /// No proxy.
    None,
    /// One proxy for every host but those listed.
    Url { url: String, no_proxy: String },
}

impl Proxy {
    /// The proxy the environment names (the default): `https_proxy`, `http_proxy`, `all_proxy`
    /// and `no_proxy`, lower case first then upper case (but `HTTP_PROXY`, never read), when
    /// the client is built.
    pub fn from_env() -> Self {
        Proxy(Kind::Env)
    }

    /// No proxy, whatever the environment says.
    pub fn none() -> Self {
        Proxy(Kind::None)
    }

    /// Every host (but loopback ones, and those of [`no_proxy`](Self::no_proxy)) through the
    /// proxy at `url`, `http://[user:password@]host:port`.
    pub fn url(url: impl Into<String>) -> Self {
        Proxy(Kind::Url {
            url: url.into(),
            no_proxy: String::new(),
        })
    }

    /// The hosts reached directly, as `NO_PROXY` lists them (comma-separated names, addresses,
    /// networks, or `*`). Only for a proxy given with [`url`](Self::url): with
    /// [`from_env`](Self::from_env), `NO_PROXY` says it.
    #[must_use]
    pub fn no_proxy(mut self, list: impl Into<String>) -> Self {
        if let Kind::Url { no_proxy, .. } = &mut self.0 {
            *no_proxy = list.into();
        }
        self
    }

    /// The rules to connect by, checked: `None` when no connection goes through a proxy.
    pub(crate) fn resolve(&self) -> Result<Option<Route>, GenesysError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// [`resolve`](Self::resolve), with the environment read through `var`.
    fn resolve_with(
        &self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Route>, GenesysError> {
        // The first of `names` set to something other than blanks.
        let first = |names: &[&'static str]| {
            names.iter().find_map(|name| {
                var(name)
                    .map(|value| value.trim().to_owned())
                    .filter(|value| !value.is_empty())
                    .map(|value| (*name, value))
            })
        };
        let (https, http, no) = match &self.0 {
            Kind::None => return Ok(None),
            Kind::Url { url, no_proxy } => {
                let url = ("the proxy URL", url.trim().to_owned());
                (Some(url.clone()), Some(url), no_proxy.clone())
            }
            // Each scheme's own variable, else ALL_PROXY: only a variable that applies is
            // checked (a socks ALL_PROXY beside an https_proxy is another tool's).
            Kind::Env => (
                first(HTTPS).or_else(|| first(ALL)),
                first(HTTP).or_else(|| first(ALL)),
                first(NO).map(|(_, list)| list).unwrap_or_default(),
            ),
        };
        // `*`: every host directly, whatever the proxy variables say (the matcher would still
        // send a host written as an address through the proxy).
        let everything_direct = no.split(',').any(|entry| entry.trim() == "*");
        if everything_direct || (https.is_none() && http.is_none()) {
            return Ok(None);
        }
        let mut builder = Matcher::builder().no(no_proxy_list(&no));
        if let Some((name, url)) = https {
            check(&url, name)?;
            builder = builder.https(url);
        }
        if let Some((name, url)) = http {
            check(&url, name)?;
            builder = builder.http(url);
        }
        Ok(Some(Route(Arc::new(builder.build()))))
    }
}

/// A `NO_PROXY` list as the matcher reads it, from the forms other tools accept too: an entry's
/// port left out (`api.corp:8443`, `[fd00::1]:443`), an IPv6 address's brackets, and
/// `*.corp.example` for the domain's hosts.
fn no_proxy_list(list: &str) -> String {
    list.split(',')
        .map(str::trim)
        .map(|entry| {
            let entry = entry.strip_prefix("*.").map_or(entry, |domain| {
                // `.corp.example`: the domain and every host under it.
                &entry[entry.len() - domain.len() - 1..]
            });
            if let Some(v6) = entry.strip_prefix('[') {
                // `[fd00::1]`, `[fd00::1]:443`, or a network, `[fd00::]/64`.
                let (address, rest) = v6.split_once(']').unwrap_or((v6, ""));
                return match rest.strip_prefix('/') {
                    Some(bits) => format!("{address}/{bits}"),
                    None => address.to_owned(),
                };
            }
            match entry.rsplit_once(':') {
                // One colon: a host and its port. More: an IPv6 address.
                Some((host, port))
                    if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    host.to_owned()
                }
                _ => entry.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy::from_env()
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Env => f.write_str("Proxy::from_env()"),
            Kind::None => f.write_str("Proxy::none()"),
            Kind::Url { url, no_proxy } => f
                .debug_struct("Proxy")
                .field("url", &redacted(url))
                .field("no_proxy", no_proxy)
                .finish(),
        }
    }
}

/// `value`, a proxy URL, checked: an `http://` URL (or one without a scheme) with a host.
/// `source` names where it came from, for the error.
fn check(value: &str, source: &str) -> Result<(), GenesysError> {
    let shown = redacted(value);
    // A user or password with a `/`, `?`, `#` or `@` of its own: parsers disagree on where the
    // host starts, and a part of the password could be taken for it (and shown as it).
    let after_scheme = value.split_once("://").map_or(value, |(_, rest)| rest);
    if let Some((userinfo, _)) = after_scheme.rsplit_once('@')
        && userinfo.contains(['/', '?', '#', '@'])
    {
        return Err(GenesysError::Config(format!(
            "{source} {shown:?}: its user or password holds a '/', '?', '#' or '@'; write \
             them percent-encoded (%2F, %3F, %23, %40)"
        )));
    }
    let uri: Uri = value.trim().parse().map_err(|_| {
        GenesysError::Config(format!(
            "{source} {shown:?} is not a URL: write it as http://[user:password@]host:port, \
             or set NO_PROXY to the hosts to reach directly"
        ))
    })?;
    match uri.scheme_str() {
        None | Some("http") => {}
        Some(other) => {
            return Err(GenesysError::Config(format!(
                "{source} {shown:?} is a {other}:// proxy; only http:// proxies (HTTP CONNECT) \
                 are supported: name an http:// proxy, or set NO_PROXY to the hosts to reach \
                 directly"
            )));
        }
    }
    let host_port = uri.authority().map_or("", |a| a.as_str());
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, hp)| hp);
    let port = host_port
        .rsplit_once(':')
        .filter(|(host, _)| !host.starts_with('[') || host.ends_with(']'))
        .map(|(_, port)| port);
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err(GenesysError::Config(format!(
            "{source} {shown:?} is not a URL: its port is not a number from 1 to 65535"
        )));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(GenesysError::Config(format!(
            "{source} {shown:?} names no host: write it as http://[user:password@]host:port"
        )));
    }
    Ok(())
}

/// A proxy URL without its user and password (everything before its last `@`) nor its path,
/// for messages.
pub(crate) fn redacted(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (hidden, rest) = match rest.rsplit_once('@') {
        Some((_, host)) => ("***@", host),
        None => ("", rest),
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    match scheme {
        Some(scheme) => format!("{scheme}://{hidden}{host}"),
        None => format!("{hidden}{host}"),
    }
}

/// Which connections go through which proxy.
#[derive(Clone)]
pub(crate) struct Route(Arc<Matcher>);

impl Route {
    /// The proxy for a connection to `dst`, if it goes through one.
    fn proxy_for(&self, dst: &Uri) -> Option<hyper_util::client::proxy::matcher::Intercept> {
        if dst.host().is_none_or(is_loopback) {
            return None;
        }
        self.0.intercept(dst)
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The matcher's own output leaves credentials out.
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Whether `host` (as a URI gives it, an IPv6 address in brackets) is this machine.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .get(bare.len().saturating_sub(".localhost".len())..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(".localhost"))
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A connector that reaches a host through its proxy, when it has one, with an HTTP `CONNECT`
/// tunnel over a connection to the proxy; directly otherwise.
#[derive(Clone)]
pub(crate) struct ProxyConnector {
    tcp: HttpConnector,
    route: Option<Route>,
    /// How long the proxy may take to answer the `CONNECT`: past it, the connection failed
    /// (nothing was sent to the API).
    handshake_timeout: Duration,
}

impl ProxyConnector {
    pub(crate) fn new(
        tcp: HttpConnector,
        route: Option<Route>,
        handshake_timeout: Duration,
    ) -> Self {
        ProxyConnector {
            tcp,
            route,
            handshake_timeout,
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl Service<Uri> for ProxyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(proxy) = self.route.as_ref().and_then(|route| route.proxy_for(&dst)) else {
            let connecting = self.tcp.call(dst);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        let shown = proxy
            .uri()
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default();
        let auth = proxy.basic_auth().cloned();
        let connecting = self.tcp.call(proxy.uri().clone());
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            let fail = |reason: String, refused: bool| ProxyError {
                proxy: shown.clone(),
                reason,
                refused,
            };
            // The connection to the proxy and its answer to the CONNECT, within the one
            // connect timeout (past it, the attempt's own would make the failure ambiguous).
            let tunnel = async {
                let io = connecting.await.map_err(|e| {
                    let e = crate::error::with_causes(&e);
                    fail(format!("cannot connect to it: {e}"), false)
                })?;
                let target =
                    target(&dst).ok_or_else(|| fail(format!("{dst} names no host"), false))?;
                handshake(io.into_inner(), &target, auth)
                    .await
                    .map_err(|(reason, refused)| {
                        fail(format!("CONNECT {target}: {reason}"), refused)
                    })
            };
            match tokio::time::timeout(timeout, tunnel).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(fail(
                    format!(
                        "no tunnel to {} within {} s",
                        target(&dst).unwrap_or_default(),
                        timeout.as_secs_f64()
                    ),
                    false,
                )
                .into()),
            }
        })
    }
}

/// The `host:port` a tunnel to `dst` asks for, its port written out.
fn target(dst: &Uri) -> Option<String> {
    let host = dst.host().filter(|h| !h.is_empty())?;
    let port = dst
        .port_u16()
        .unwrap_or(if dst.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    Some(format!("{host}:{port}"))
}

/// The most bytes of the proxy's answer to a `CONNECT` read before it is given up.
const MAX_ANSWER: usize = 8 * 1024;

/// Asks the proxy on `stream` for a tunnel to `target`: the stream, once the proxy said yes;
/// otherwise what went wrong, and whether it was the proxy's refusal (a 4xx answer).
async fn handshake(
    mut stream: TcpStream,
    target: &str,
    auth: Option<HeaderValue>,
) -> Result<TcpStream, (String, bool)> {
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(auth) = auth {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream
        .write_all(&head)
        .await
        .map_err(|e| (format!("cannot send it: {e}"), false))?;
    let mut answer = Vec::with_capacity(512);
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| (format!("cannot read the answer: {e}"), false))?;
        if n == 0 {
            return Err((
                "the proxy closed the connection without answering".into(),
                false,
            ));
        }
        answer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&answer) {
            Ok(httparse::Status::Complete(len)) => {
                let code = response.code.unwrap_or(0);
                if !(200..300).contains(&code) {
                    let reason = response.reason.unwrap_or("").to_owned();
                    // A 408 or a 429 passes (a proxy busy, or slow to read): asked again later.
                    let refused = (400..500).contains(&code) && code != 408 && code != 429;
                    return Err((
                        format!(
                            "the proxy answered {code} {reason}{}",
                            match code {
                                407 =>
                                    "; it wants a user and password: put them in its URL, \
                                    http://user:password@host:port",
                                403 =>
                                    "; it does not allow this host or port: ask its \
                                    administrators, or set NO_PROXY if the host is reachable \
                                    directly",
                                _ => "",
                            }
                        ),
                        refused,
                    ));
                }
                if len != answer.len() {
                    return Err((
                        "the proxy sent data after its answer to CONNECT".into(),
                        false,
                    ));
                }
                return Ok(stream);
            }
            Ok(httparse::Status::Partial) if answer.len() < MAX_ANSWER => {}
            Ok(httparse::Status::Partial) => {
                return Err((
                    format!("its answer's head is over {MAX_ANSWER} bytes"),
                    false,
                ));
            }
            Err(e) => return Err((format!("its answer is not HTTP: {e}"), false)),
        }
    }
}

/// A tunnel through a proxy could not be opened. Nothing was sent to the API.
#[derive(Debug)]
pub struct ProxyError {
    proxy: String,
    reason: String,
    refused: bool,
}

/// Whether `error`, or one of its sources, is a proxy's refusal of the tunnel
/// ([`ProxyError::is_refusal`]).
pub(crate) fn refused_in(error: &(dyn std::error::Error + 'static)) -> bool {
    genesys_tower::error::find::<ProxyError>(error).is_some_and(ProxyError::is_refusal)
}

impl ProxyError {
    /// Whether the proxy refused the tunnel (a 4xx answer but 408 and 429: 403 for a host or
    /// port it does not allow, 407 for missing or wrong credentials). Such a failure is final: the client does
    /// not ask again (a proxy may lock an account after a few wrong passwords), and a job does
    /// not wait for it to pass.
    pub fn is_refusal(&self) -> bool {
        self.refused
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no tunnel through the proxy at {}: {}",
            self.proxy, self.reason
        )
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests;
