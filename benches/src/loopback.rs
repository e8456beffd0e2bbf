//! A minimal HTTP/1.1 server on 127.0.0.1 for the loopback benchmark: every request is answered
//! at once with a small JSON body, on kept-alive connections.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The body every request gets.
pub const BODY: &[u8] = br#"{"id":"42","name":"Agent","version":3}"#;

/// A running loopback server; it stops when dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds 127.0.0.1 on an ephemeral port and serves on the current tokio runtime.
    pub async fn spawn() -> io::Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Small responses: without NODELAY, Nagle and delayed ACKs add 40 ms stalls.
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header(header::CONTENT_TYPE, "application/json")
                                .body(Full::new(Bytes::from_static(BODY)))
                                .expect("a static response is valid"),
                        )
                    });
                    // A client closing its connection ends this task; nothing to report.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Server { addr, task })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// hyper-util's pooled client as every loopback client uses it: HTTP/1, `TCP_NODELAY` (small
/// requests stall 40 ms on Nagle and delayed ACKs without it).
pub fn hyper_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    genesys_tower::Body,
> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// The leaf every loopback stack wraps: [`hyper_client`], its response body made a
/// `genesys_tower::Body` and its errors boxed, as `genesys-client` maps its hyper client.
pub fn hyper_leaf() -> impl tower_service::Service<
    http::Request<genesys_tower::Body>,
    Response = http::Response<genesys_tower::Body>,
    Error = genesys_tower::BoxError,
    Future: Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    use tower::ServiceExt;
    hyper_client()
        .map_response(|r: http::Response<hyper::body::Incoming>| r.map(genesys_tower::Body::new))
        .map_err(genesys_tower::BoxError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    #[tokio::test]
    async fn answers_with_the_body() {
        let server = Server::spawn().await.unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri = server.url("/api/v2/users/42").parse().unwrap();
        let response = client.get(uri).await.unwrap();
        assert!(response.status().is_success());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], BODY);
    }
}
