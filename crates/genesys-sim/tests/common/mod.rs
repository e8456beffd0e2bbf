//! A tiny HTTP/1 client over a fresh connection per request, so a reset hits exactly one call.

#![allow(dead_code, unreachable_pub)]

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the ErrorBody shape and that contextId is the correlation id.
    pub fn error_body(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let b = self.json();
        assert_eq!(b["status"], status);
        assert_eq!(b["code"], code, "{b}");
        assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(b["details"].is_array() && b["errors"].is_array(), "{b}");
        let cid = self
            .header("inin-correlation-id")
            .expect("correlation id header");
        assert_eq!(b["contextId"], cid);
        b
    }
}

pub async fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Resp, BoxError> {
    let addr = base.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into()))?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

pub fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// The answer to a client-credentials token request with the demo client in a Basic header.
pub async fn token_answer(base: &str) -> Resp {
    send(
        base,
        "POST",
        "/oauth/token",
        &[
            ("authorization", &basic("demo-client", "demo-secret")),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "grant_type=client_credentials",
    )
    .await
    .expect("token request")
}

pub async fn token(base: &str) -> String {
    let r = token_answer(base).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// An authenticated API call with a JSON body (empty string: no body).
pub async fn api(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> Result<Resp, BoxError> {
    let auth = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    send(base, method, path, &headers, body.to_string()).await
}

/// `GET /api/v2/organizations/limits/namespaces/platform.api` with `token`.
pub async fn platform_limits(base: &str, token: &str) -> Resp {
    api(
        base,
        token,
        "GET",
        "/api/v2/organizations/limits/namespaces/platform.api",
        "",
        &[],
    )
    .await
    .unwrap()
}
