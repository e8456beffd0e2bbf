use std::collections::HashMap;

use super::*;

fn resolve(proxy: &Proxy, env: &[(&str, &str)]) -> Result<Option<Route>, GenesysError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    proxy.resolve_with(|name| env.get(name).cloned())
}

fn through(route: &Option<Route>, dst: &str) -> Option<String> {
    let dst: Uri = dst.parse().unwrap();
    route
        .as_ref()?
        .proxy_for(&dst)
        .map(|i| i.uri().authority().unwrap().to_string())
}

#[test]
fn no_variable_no_proxy() {
    assert!(resolve(&Proxy::from_env(), &[]).unwrap().is_none());
    assert!(
        resolve(&Proxy::from_env(), &[("HTTPS_PROXY", "  ")])
            .unwrap()
            .is_none()
    );
    assert!(
        resolve(&Proxy::none(), &[("HTTPS_PROXY", "http://p:1")])
            .unwrap()
            .is_none()
    );
}

#[test]
fn each_scheme_goes_through_its_own_variable_or_all_proxy() {
    let route = resolve(
        &Proxy::from_env(),
        &[
            ("https_proxy", "http://secure:3128"),
            ("ALL_PROXY", "other:8080"),
        ],
    )
    .unwrap();
    assert_eq!(
        through(&route, "https://api.mypurecloud.com/api/v2/users").as_deref(),
        Some("secure:3128")
    );
    assert_eq!(
        through(&route, "http://api.example/").as_deref(),
        Some("other:8080")
    );
    let route = resolve(&Proxy::from_env(), &[("http_proxy", "http://plain:80")]).unwrap();
    assert_eq!(through(&route, "https://api.mypurecloud.com/"), None);
    assert_eq!(
        through(&route, "http://api.example/").as_deref(),
        Some("plain:80")
    );
    // An empty lower-case variable does not hide the upper-case one.
    let route = resolve(
        &Proxy::from_env(),
        &[("https_proxy", ""), ("HTTPS_PROXY", "http://upper:1")],
    )
    .unwrap();
    assert_eq!(
        through(&route, "https://api.mypurecloud.com/").as_deref(),
        Some("upper:1")
    );
}

#[test]
fn upper_case_http_proxy_is_never_read() {
    // A CGI program gets HTTP_PROXY from a request's `Proxy:` header.
    let route = resolve(&Proxy::from_env(), &[("HTTP_PROXY", "http://evil:1")]).unwrap();
    assert!(route.is_none());
}

#[test]
fn a_variable_that_does_not_apply_is_not_checked() {
    // What some proxy tools export: a socks all_proxy beside the http ones.
    let route = resolve(
        &Proxy::from_env(),
        &[
            ("https_proxy", "http://127.0.0.2:7890"),
            ("http_proxy", "http://127.0.0.2:7890"),
            ("all_proxy", "socks5://127.0.0.2:7890"),
        ],
    )
    .unwrap();
    assert_eq!(
        through(&route, "https://api.mypurecloud.com/").as_deref(),
        Some("127.0.0.2:7890")
    );
}

#[test]
fn no_proxy_and_loopback_hosts_are_reached_directly() {
    let env = [
        ("HTTPS_PROXY", "http://p:3128"),
        (
            "NO_PROXY",
            "internal.example, 10.0.0.0/8, api.corp:8443, 192.0.2.7:443, [fd00::1], \
             [fd00::2]:443, *.wild.example",
        ),
    ];
    let route = resolve(&Proxy::from_env(), &env).unwrap();
    for direct in [
        "https://internal.example/",
        "https://api.internal.example:8443/",
        "https://10.1.2.3/",
        "https://localhost:8443/",
        "https://auth.localhost/",
        "https://127.0.0.1:1/",
        "https://127.8.9.10/",
        "https://[::1]:8443/",
        "https://api.corp/",
        "https://192.0.2.7/",
        "https://[fd00::1]/",
        "https://[fd00::2]:8443/",
        "https://a.wild.example/",
    ] {
        assert_eq!(through(&route, direct), None, "{direct}");
    }
    for proxied in [
        "https://login.mypurecloud.com/",
        "https://notinternal.example/",
    ] {
        assert_eq!(
            through(&route, proxied).as_deref(),
            Some("p:3128"),
            "{proxied}"
        );
    }
    // `*`: every host directly, an address too, and a proxy variable that could not be used
    // does not matter.
    assert!(
        resolve(&Proxy::url("http://p:3128").no_proxy("*"), &[])
            .unwrap()
            .is_none()
    );
    assert!(
        resolve(
            &Proxy::from_env(),
            &[
                ("all_proxy", "socks5://p:1080"),
                ("no_proxy", "a.example, *")
            ]
        )
        .unwrap()
        .is_none()
    );
    let route = resolve(
        &Proxy::url("http://p:3128").no_proxy("[fd00::]/64, fd01::1"),
        &[],
    )
    .unwrap();
    for direct in ["https://[fd00::7]/", "https://[fd01::1]:8443/"] {
        assert_eq!(through(&route, direct), None, "{direct}");
    }
    assert_eq!(
        through(&route, "https://[fd02::1]/").as_deref(),
        Some("p:3128")
    );
}

#[test]
fn a_proxy_that_cannot_be_used_is_refused_by_name_without_its_password() {
    for (name, value, says) in [
        ("HTTPS_PROXY", "socks5://u:s3cret@p:1080", "socks5://"),
        ("all_proxy", "https://u:s3cret@p:443", "https://"),
        ("http_proxy", "http://u:s3cret@/", "not a URL"),
        ("HTTPS_PROXY", "http://u:s3cret@p:99999", "not a URL"),
        // A password with a character of its own that ends the host's part, or an `@`.
        ("HTTPS_PROXY", "http://u:s3c/ret@p:3128", "percent-encoded"),
        (
            "HTTPS_PROXY",
            "http://u:2024/s3cret@p:3128",
            "percent-encoded",
        ),
        ("HTTPS_PROXY", "http://u:p@s3cret@p:3128", "percent-encoded"),
        ("HTTPS_PROXY", "http://u:s3cret#x@p:3128", "percent-encoded"),
    ] {
        let Err(GenesysError::Config(message)) = resolve(&Proxy::from_env(), &[(name, value)])
        else {
            panic!("{name}={value} accepted");
        };
        assert!(message.contains(name), "{message}");
        assert!(message.contains(says), "{message}");
        assert!(!message.contains("s3c"), "{message}");
        assert!(!message.contains("ret"), "{message}");
    }
    let Err(GenesysError::Config(message)) = resolve(&Proxy::url("socks5://p:1"), &[]) else {
        panic!("a socks proxy accepted");
    };
    assert!(message.contains("the proxy URL"), "{message}");
}

#[test]
fn credentials_stay_out_of_debug_and_messages() {
    let proxy = Proxy::url("http://user:s3cret@p:3128/x?y").no_proxy("a");
    assert!(!format!("{proxy:?}").contains("s3cret"));
    assert_eq!(redacted("http://user:s3cret@p:3128/x"), "http://***@p:3128");
    assert_eq!(redacted("u:p@host:1"), "***@host:1");
    assert_eq!(redacted("http://host:1"), "http://host:1");
    assert_eq!(redacted("http://u:s3c/ret@p:3128/x"), "http://***@p:3128");
    assert_eq!(redacted("http://u:p@s3cret@p:3128"), "http://***@p:3128");
    for url in [
        "http://u:s3c/ret@p:1",
        "http://u:s3c#ret@p:1",
        "http://u:s3c?ret@p:1",
    ] {
        assert!(!format!("{:?}", Proxy::url(url)).contains("s3c"), "{url}");
    }
    let route = resolve(&Proxy::url("http://user:s3cret@p:3128"), &[]).unwrap();
    assert!(!format!("{route:?}").contains("s3cret"));
}

/// A proxy that answers `answer` to the first request on a connection, and what it was sent.
async fn answering(answer: &'static [u8]) -> (TcpStream, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            got.push(byte[0]);
        }
        stream.write_all(answer).await.unwrap();
        got
    });
    (TcpStream::connect(addr).await.unwrap(), server)
}

#[tokio::test]
async fn the_handshake_asks_for_the_host_and_port_with_the_credentials() {
    let (stream, server) = answering(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    let auth = HeaderValue::from_static("Basic dTpw");
    handshake(stream, "api.mypurecloud.com:443", Some(auth))
        .await
        .unwrap();
    let sent = String::from_utf8(server.await.unwrap()).unwrap();
    assert_eq!(
        sent,
        "CONNECT api.mypurecloud.com:443 HTTP/1.1\r\nHost: api.mypurecloud.com:443\r\n\
         Proxy-Authorization: Basic dTpw\r\n\r\n"
    );
}

#[tokio::test]
async fn a_refused_tunnel_says_what_the_proxy_answered() {
    for (answer, says) in [
        (
            &b"HTTP/1.1 403 Forbidden\r\n\r\n"[..],
            "403 Forbidden; it does not allow",
        ),
        (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "407"),
        (
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
            "502 Bad Gateway",
        ),
        (b"HTTP/1.1 429 Too Many Requests\r\n\r\n", "429"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not HTTP"),
        (b"HTTP/1.1 200 OK\r\n\r\nearly", "data after its answer"),
    ] {
        let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
        let (stream, _server) = answering(answer).await;
        let Err((reason, refused)) = handshake(stream, "h:443", None).await else {
            panic!("{} accepted", String::from_utf8_lossy(answer));
        };
        assert!(reason.contains(says), "{reason}");
        // A 4xx is a refusal, but a 429 or a 408: the proxy busy, asked again later.
        assert_eq!(
            refused,
            reason.contains(" 40") && !reason.contains("408"),
            "{reason}"
        );
    }
}

#[test]
fn a_tunnel_names_the_port_of_the_scheme_when_the_url_has_none() {
    let target = |s: &str| target(&s.parse().unwrap());
    assert_eq!(
        target("https://api.example/x").as_deref(),
        Some("api.example:443")
    );
    assert_eq!(
        target("http://api.example/x").as_deref(),
        Some("api.example:80")
    );
    assert_eq!(
        target("https://api.example:8443/").as_deref(),
        Some("api.example:8443")
    );
    assert_eq!(
        target("https://[2001:db8::1]/").as_deref(),
        Some("[2001:db8::1]:443")
    );
}
