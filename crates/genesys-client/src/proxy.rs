//! Outbound HTTP proxies for the default leaf: `HTTPS_PROXY` and its kin, or a URL of your own.
//!
//! A host whose connections must go through a proxy is reached through an HTTP `CONNECT`
//! tunnel: the TLS session is end to end, from the client to the API through the tunnel, so
//! the proxy sees the host's name and port and nothing else. The proxy's user and password,
//! when its URL has them, go in the `CONNECT` request's `Proxy-Authorization` header (Basic),
//! never in a log or a `Debug` output.
//!
//! Which connections go through it, by default ([`Proxy::from_env`]), as curl reads the same
//! variables: a `https://` host through `HTTPS_PROXY` (or `https_proxy`), a `http://` host through
//! `HTTP_PROXY` (or `http_proxy`), either through `ALL_PROXY` (or `all_proxy`) when its own is not
//! set, except the hosts `NO_PROXY` (or `no_proxy`) lists (names, which cover their subdomains,
//! addresses, networks such as `10.0.0.0/8`, or `*` for every host). A loopback host
//! (`localhost`, `127.0.0.0/8`, `::1`) is never reached through a proxy: a proxy elsewhere
//! would reach its own.
//!
//! Only `http://` proxy URLs are supported (a URL without a scheme is taken as one). Any other
//! (`https://`, `socks5://`) is refused when the client is built, saying which variable holds
//! it, rather than ignored: a client that ignored it would try to connect directly, which the
//! network that set a proxy usually forbids.
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

/// The proxy variables, in the order they are looked for, each name then its lower-case form.
const ALL: [&str; 2] = ["ALL_PROXY", "all_proxy"];
const HTTPS: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];
const HTTP: [&str; 2] = ["HTTP_PROXY", "http_proxy"];
const NO: [&str; 2] = ["NO_PROXY", "no_proxy"];

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
    /// The proxy the environment names (the default): `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`
    /// and `NO_PROXY`, upper or lower case, read when the client is built.
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
        let first = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|name| var(name).map(|value| (name, value)))
        };
        let mut builder = Matcher::builder();
        let mut any = false;
        match &self.0 {
            Kind::None => return Ok(None),
            Kind::Url { url, no_proxy } => {
                check(url, "the proxy URL")?;
                builder = builder.all(url.trim().to_owned()).no(no_proxy.clone());
                any = true;
            }
            Kind::Env => {
                for names in [ALL, HTTPS, HTTP] {
                    let Some((name, value)) = first(names).filter(|(_, v)| !v.trim().is_empty())
                    else {
                        continue;
                    };
                    let value = value.trim().to_owned();
                    check(&value, name)?;
                    builder = match names {
                        ALL => builder.all(value),
                        HTTPS => builder.https(value),
                        _ => builder.http(value),
                    };
                    any = true;
                }
                if let Some((_, value)) = first(NO) {
                    builder = builder.no(value);
                }
            }
        }
        Ok(any.then(|| Route(Arc::new(builder.build()))))
    }
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

/// A proxy URL without its user and password, for messages.
pub(crate) fn redacted(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = match rest[..end].rfind('@') {
        Some(at) => format!("***@{}", &rest[at + 1..end]),
        None => rest[..end].to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
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
            let fail = |reason: String| ProxyError {
                proxy: shown.clone(),
                reason,
            };
            let io = connecting.await.map_err(|e| {
                fail(format!(
                    "cannot connect to it: {}",
                    crate::error::with_causes(&e)
                ))
            })?;
            let target = target(&dst).ok_or_else(|| fail(format!("{dst} names no host")))?;
            match tokio::time::timeout(timeout, handshake(io.into_inner(), &target, auth)).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(reason)) => Err(fail(format!("CONNECT {target}: {reason}")).into()),
                Err(_) => Err(fail(format!(
                    "CONNECT {target}: no answer within {} s",
                    timeout.as_secs_f64()
                ))
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
/// what it said otherwise.
async fn handshake(
    mut stream: TcpStream,
    target: &str,
    auth: Option<HeaderValue>,
) -> Result<TcpStream, String> {
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
        .map_err(|e| format!("cannot send it: {e}"))?;
    let mut answer = Vec::with_capacity(512);
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            return Err("the proxy closed the connection without answering".into());
        }
        answer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&answer) {
            Ok(httparse::Status::Complete(len)) => {
                let code = response.code.unwrap_or(0);
                if !(200..300).contains(&code) {
                    let reason = response.reason.unwrap_or("").to_owned();
                    return Err(format!(
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
                    ));
                }
                if len != answer.len() {
                    return Err("the proxy sent data after its answer to CONNECT".into());
                }
                return Ok(stream);
            }
            Ok(httparse::Status::Partial) if answer.len() < MAX_ANSWER => {}
            Ok(httparse::Status::Partial) => {
                return Err(format!("its answer's head is over {MAX_ANSWER} bytes"));
            }
            Err(e) => return Err(format!("its answer is not HTTP: {e}")),
        }
    }
}

/// A tunnel through a proxy could not be opened. Nothing was sent to the API.
#[derive(Debug)]
pub struct ProxyError {
    proxy: String,
    reason: String,
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
