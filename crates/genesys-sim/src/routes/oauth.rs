//! `POST /oauth/token`: client credentials.

use super::*;

/// A field of an `application/x-www-form-urlencoded` body.
fn form_field(form: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(form)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// One decoded part of `id:secret` in a Basic header (RFC 6749 2.3.1 form-encodes them).
fn form_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// `POST /oauth/token`: client credentials in a Basic header or in the form body.
pub(super) async fn oauth_token(sh: &Shared, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    if sh.login_down.load(Relaxed) {
        // A login host that is down for a while: every request answered alike until it is back.
        sh.stats.fault("login-down");
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The authorization server is temporarily unavailable",
        );
    }
    if sh.cfg.faults.token_error > 0.0 {
        let n = sh.token_seq.fetch_add(1, Relaxed);
        let u: f64 = rng_for(sh.cfg.seed, STREAM_TOKEN_FAULTS, n).random();
        if u < sh.cfg.faults.token_error {
            sh.stats.fault("token-5xx");
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The authorization server is temporarily unavailable",
            );
        }
    }
    let body = match read_body(&parts.headers, body, 64 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The token request body is too large or unreadable",
            );
        }
    };
    // Required, as the real endpoint documents it: a client that leaves it out is told so.
    let form_type = parts.headers.get(CONTENT_TYPE).is_some_and(|ct| {
        ct.to_str()
            .unwrap_or_default()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    if !form_type {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The token request must be sent as application/x-www-form-urlencoded",
        );
    }
    let form: &[u8] = &body;
    let basic = match parts.headers.get(AUTHORIZATION) {
        None => None,
        Some(v) => {
            let decoded = v
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
                .and_then(|(_, b64)| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .ok()
                })
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|s| {
                    s.split_once(':')
                        .map(|(i, p)| (form_decode(i), form_decode(p)))
                });
            match decoded {
                Some(c) => Some(c),
                None => {
                    return with_www_auth(oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "The Authorization header is not valid Basic credentials (base64 of id:secret)",
                    ));
                }
            }
        }
    };
    let used_basic = basic.is_some();
    let creds = basic.or_else(|| {
        Some((
            form_field(form, "client_id")?,
            form_field(form, "client_secret")?,
        ))
    });
    match form_field(form, "grant_type").as_deref() {
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing: send grant_type=client_credentials",
            );
        }
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type `{other}` is not supported here: use client_credentials"),
            );
        }
    }
    let Some((id, secret)) = creds else {
        return with_www_auth(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client credentials are missing: send an Authorization: Basic header or client_id and client_secret in the form body",
        ));
    };
    if sh.clients.get(&id).is_none_or(|s| *s != secret) {
        let status = if used_basic {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        let resp = oauth_error(status, "invalid_client", "client authentication failed");
        return if used_basic {
            with_www_auth(resp)
        } else {
            resp
        };
    }
    let mut raw = [0u8; 32];
    rand::rngs::StdRng::from_os_rng().fill(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    sh.tokens
        .insert(token.clone(), Arc::from(id.as_str()), sh.cfg.token_ttl);
    let issued = sh.stats.tokens_issued.fetch_add(1, Relaxed);
    // The type's case is not promised (OAuth's token types are case-insensitive): on a share of
    // the tokens (`SimConfig::code_variants`), another spelling.
    let share = sh.cfg.code_variants;
    let other_case =
        share > 0.0 && rng_for(sh.cfg.seed, STREAM_TOKEN_VARIANTS, issued).random::<f64>() < share;
    let mut resp = json_response(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "token_type": if other_case { "Bearer" } else { "bearer" },
            "expires_in": sh.cfg.token_ttl.as_secs(),
        }),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

fn with_www_auth(mut resp: Resp) -> Resp {
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"oauth\""),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%3Ac%2"), "a b:c%2");
        assert_eq!(
            form_field(
                b"grant_type=client_credentials&client_id=x%40y",
                "client_id"
            )
            .as_deref(),
            Some("x@y")
        );
    }
}
