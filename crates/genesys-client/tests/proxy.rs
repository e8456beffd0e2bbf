//! The default leaf through an HTTP proxy: a `CONNECT` proxy of the test's own in front of the
//! simulator, as a corporate network puts one in front of every outside host. The API is named
//! by a host name that does not resolve here, so the client can reach it only through the
//! proxy, which resolves every name to this machine.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use genesys_client::GenesysClient;
use genesys_client::proxy::Proxy;
use genesys_sim::{SimConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with a `CONNECT`.
#[derive(Clone, Copy)]
enum Mode {
    /// Tunnels it when it carries `Proxy-Authorization: <this>`; 407 otherwise.
    Tunnel(&'static str),
}

/// A `CONNECT` proxy on 127.0.0.1: the heads of the requests it got, and its address.
async fn proxy(mode: Mode) -> (Arc<Mutex<Vec<String>>>, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                log.lock().unwrap().push(head.clone());
                let Mode::Tunnel(credentials) = mode;
                if !head.contains(&format!("Proxy-Authorization: {credentials}\r\n")) {
                    let _ = client
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                // "CONNECT host:port HTTP/1.1": any host is this machine.
                let target = head.split(' ').nth(1).unwrap_or_default();
                let port = target.rsplit(':').next().unwrap_or_default();
                let Ok(mut upstream) = TcpStream::connect(format!("127.0.0.1:{port}")).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (seen, addr)
}

/// A client of the simulator's API under a name only the proxy knows.
fn client(api: &str, proxy: Proxy) -> GenesysClient {
    common::quick_retries(
        GenesysClient::builder()
            .base_url(api)
            .login_url(api)
            .client_credentials("demo-client", "demo-secret")
            .proxy(proxy)
            .connect_timeout(Duration::from_millis(500)),
    )
    .build()
    .unwrap()
}

#[tokio::test]
async fn the_api_and_its_login_host_are_reached_through_the_proxy_with_its_credentials() {
    let sim = Simulator::spawn(SimConfig::default().users(3))
        .await
        .unwrap();
    // "Basic " and base64 of "gcx:p@ss word".
    let (seen, addr) = proxy(Mode::Tunnel("Basic Z2N4OnBAc3Mgd29yZA==")).await;
    let api = format!("http://api.behind-proxy.test:{}", sim.addr().port());
    let client = client(&api, Proxy::url(format!("http://gcx:p%40ss%20word@{addr}")));
    let page = client.list_users_page(10, 1).await.unwrap();
    assert_eq!(page.entities.len(), 3);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for head in &seen {
        assert!(
            head.starts_with(&format!(
                "CONNECT api.behind-proxy.test:{} HTTP/1.1\r\n",
                sim.addr().port()
            )),
            "{head}"
        );
    }
}

#[tokio::test]
async fn a_proxy_that_wants_other_credentials_is_a_connection_failure_that_says_so() {
    let (seen, addr) = proxy(Mode::Tunnel("Basic bm90IHRoZXNl")).await;
    let client = client(
        "http://api.behind-proxy.test:9",
        Proxy::url(format!("http://gcx:hunter2@{addr}")),
    );
    let err = client
        .execute_action("echo", &serde_json::json!({}))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("407"), "{text}");
    assert!(text.contains("user and password"), "{text}");
    assert!(!text.contains("hunter2"), "the proxy's password in {text}");
    assert!(!err.may_have_been_applied(), "{err}");
    assert!(
        !err.is_token_unavailable(),
        "a setting to fix, not an outage: {err}"
    );
    // Asked once: a proxy may lock an account after a few wrong passwords.
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn loopback_hosts_and_no_proxy_hosts_are_reached_directly() {
    let sim = Simulator::spawn(SimConfig::default().users(2))
        .await
        .unwrap();
    // A proxy that would refuse every tunnel: any request through it fails.
    let (seen, addr) = proxy(Mode::Tunnel("never")).await;
    let direct = client(&sim.base_url(), Proxy::url(format!("http://{addr}")));
    assert_eq!(
        direct.list_users_page(10, 1).await.unwrap().entities.len(),
        2
    );
    let named = format!("http://localhost:{}", sim.addr().port());
    let by_name = client(&named, Proxy::url(format!("http://{addr}")));
    assert_eq!(
        by_name.list_users_page(10, 1).await.unwrap().entities.len(),
        2
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

/// A TLS server in front of the simulator (as a load balancer terminates TLS before the API),
/// with the test authority's certificate for `localhost` and `api.behind-proxy.test`: its port.
async fn tls_in_front_of(sim: std::net::SocketAddr) -> u16 {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(include_bytes!("fixtures/server.pem"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("fixtures/server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(sim).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn https_through_the_tunnel_with_an_authority_of_the_networks_own() {
    let sim = Simulator::spawn(SimConfig::default().users(2))
        .await
        .unwrap();
    let port = tls_in_front_of(sim.addr()).await;
    let (seen, addr) = proxy(Mode::Tunnel("Basic Z2N4Omd4Yw==")).await;
    let api = format!("https://api.behind-proxy.test:{port}");
    let proxy_url = format!("http://gcx:gxc@{addr}");
    let ca = include_bytes!("fixtures/ca.pem");

    // The authority trusted: the API and the login host answer through the tunnel.
    let trusted = GenesysClient::builder()
        .base_url(&api)
        .login_url(&api)
        .client_credentials("demo-client", "demo-secret")
        .proxy(Proxy::url(&proxy_url))
        .root_certificates_pem(&ca[..])
        .no_pacing()
        .build()
        .unwrap();
    assert_eq!(
        trusted.list_users_page(10, 1).await.unwrap().entities.len(),
        2
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|head| head.starts_with(&format!("CONNECT api.behind-proxy.test:{port} "))),
    );

    // Not trusted: a connection failure that says why, with nothing sent.
    let untrusted = client(&api, Proxy::url(&proxy_url));
    let err = untrusted.list_users_page(10, 1).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("certificate"), "{text}");
    assert!(!err.may_have_been_applied(), "{err}");
}
