//! Tests of `error`.
use super::*;

#[test]
fn error_body_fields_and_display() {
    let body = br#"{"status":429,"code":"too.many.requests","message":"Rate limit exceeded the maximum [300] requests within [60] seconds","messageWithParams":"Rate limit exceeded the maximum [{limit}] requests within [{window}] seconds","messageParams":{"limit":"300","window":"60"},"contextId":"ctx-1","details":[{"errorCode":"x","fieldName":"name"}],"errors":[{"code":"inner"}],"limit":{"key":"client.credentials.token.rate.per.minute","namespace":"platform.api","value":300}}"#;
    let e = ApiError::from_response(StatusCode::TOO_MANY_REQUESTS, Some("hdr".into()), body);
    assert_eq!(e.code(), Some("too.many.requests"));
    assert_eq!(
        e.message(),
        "Rate limit exceeded the maximum [300] requests within [60] seconds"
    );
    assert_eq!(e.context_id(), Some("ctx-1"));
    assert_eq!(e.correlation_id(), Some("hdr"));
    let b = e.body().unwrap();
    assert_eq!(b.details[0].field_name.as_deref(), Some("name"));
    assert_eq!(b.errors[0].code.as_deref(), Some("inner"));
    assert_eq!(
        b.limit.as_ref().unwrap().key.as_deref(),
        Some("client.credentials.token.rate.per.minute")
    );
    let shown = GenesysError::from(e).to_string();
    assert!(
        shown.contains("too.many.requests") && shown.contains("ctx-1"),
        "{shown}"
    );
}

#[test]
fn non_error_body_is_kept_as_text() {
    let e = ApiError::from_response(
        StatusCode::BAD_GATEWAY,
        Some("corr".into()),
        b"<html>bad gateway</html>",
    );
    assert!(e.body().is_none());
    assert_eq!(e.text(), "<html>bad gateway</html>");
    assert!(e.to_string().contains("<html>bad gateway</html>"));
    assert!(e.to_string().contains("corr"));
}

#[test]
fn version_conflicts_are_recognised_both_ways() {
    let msg = br#"{"code":"general.conflict","message":"The version supplied does not match the current version of the user"}"#;
    assert!(ApiError::from_response(StatusCode::CONFLICT, None, msg).is_version_conflict());
    let msg400 = br#"{"code":"bad.request","message":"The version supplied does not match the current version of the user"}"#;
    assert!(ApiError::from_response(StatusCode::BAD_REQUEST, None, msg400).is_version_conflict());
    let other = br#"{"code":"bad.request","message":"name is required"}"#;
    assert!(!ApiError::from_response(StatusCode::BAD_REQUEST, None, other).is_version_conflict());
}

#[test]
fn oauth_errors_are_typed() {
    let e = OAuthError::from_response(
        StatusCode::BAD_REQUEST,
        br#"{"error":"invalid_client","description":"client not found","error_description":"x"}"#,
    );
    assert_eq!(e.error, OAuthErrorKind::InvalidClient);
    assert_eq!(e.description.as_deref(), Some("client not found"));
    assert!(e.is_bad_credentials());
    assert!(e.to_string().contains("invalid_client"));
    let e = OAuthError::from_response(
        StatusCode::UNAUTHORIZED,
        br#"{"error":"invalid_client","error_description":"bad"}"#,
    );
    assert_eq!(e.description.as_deref(), Some("bad"));
}

/// What the login host's answer says is named as it is: a refusal, an outage, or an answer
/// that is no OAuth error at all (a firewall's page), which blames no credentials.
#[test]
fn a_login_answer_is_named_for_what_it_is() {
    let shown = |status: u16, body: &[u8]| {
        OAuthError::from_response(StatusCode::from_u16(status).unwrap(), body).to_string()
    };
    let refused = shown(401, br#"{"error":"invalid_client"}"#);
    assert!(
        refused.contains("refused the client credentials"),
        "{refused}"
    );
    let down = shown(503, br#"{"error":"temporarily_unavailable"}"#);
    assert!(down.contains("login host is unavailable"), "{down}");
    let waf = shown(403, b"<html>Access denied</html>");
    assert!(waf.contains("answered without issuing a token"), "{waf}");
    assert!(!waf.contains("credentials"), "{waf}");
}

#[test]
fn placeholders_without_values_are_kept() {
    let b: ErrorBody = serde_json::from_str(
        r#"{"messageWithParams":"{a} and {b} and {unclosed","messageParams":{"a":"A"}}"#,
    )
    .unwrap();
    assert_eq!(b.rendered_message().unwrap(), "A and {b} and {unclosed");
}

#[test]
fn repeated_placeholders_do_not_amplify() {
    // A 120 KB template of one placeholder whose value is 1 KB: fully expanded, about 40 MB.
    let template = "{p}".repeat(40_000);
    let body = serde_json::json!({
        "code": "bad.request",
        "messageWithParams": template,
        "messageParams": {"p": "x".repeat(1_000)},
    })
    .to_string();
    let e = ApiError::from_response(StatusCode::BAD_REQUEST, None, body.as_bytes());
    assert_eq!(e.message().chars().count(), MESSAGE_MAX_CHARS);
    assert!(!e.is_version_conflict());
    assert!(e.to_string().len() < 1_000);
    let rendered = e.body().unwrap().rendered_message_within(10).unwrap();
    assert_eq!(rendered, "xxxxxxxxxx");
}

#[test]
fn oauth_descriptions_are_cut() {
    let body = serde_json::json!({
        "error": "x".repeat(10_000),
        "description": "d".repeat(100_000),
    })
    .to_string();
    let e = OAuthError::from_response(StatusCode::BAD_REQUEST, body.as_bytes());
    assert!(e.to_string().len() < 1_500, "{}", e.to_string().len());
}

#[test]
fn multibyte_text_is_cut_on_char_boundaries() {
    let b: ErrorBody = serde_json::from_str(
        r#"{"messageWithParams":"é{a}ü{b}","messageParams":{"a":"日本語","b":"x"}}"#,
    )
    .unwrap();
    for n in 0..10 {
        let r = b.rendered_message_within(n).unwrap();
        assert_eq!(r.chars().count(), n.min(6), "{n}: {r}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(4000)))]

    #[test]
    fn any_error_body_parses_without_panic(
        status in 100u16..1000,
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..128),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let e = ApiError::from_response(status, None, &body);
        proptest::prop_assert!(e.message().chars().count() <= MESSAGE_MAX_CHARS);
        let _ = e.is_version_conflict();
        let _ = e.to_string();
        let _ = format!("{e:?}");
        let oauth = OAuthError::from_response(status, &body);
        proptest::prop_assert!(oauth.to_string().chars().count() < 2 * MESSAGE_MAX_CHARS);
    }

    #[test]
    fn any_template_renders_within_the_cut(
        template in "[{}a-z]{0,64}",
        params in proptest::collection::btree_map("[a-z{}]{0,3}", "\\PC{0,40}", 0..4),
        max in 0usize..80,
    ) {
        let body = ErrorBody {
            message_with_params: Some(template),
            message_params: params,
            ..ErrorBody::default()
        };
        let r = body.rendered_message_within(max).unwrap();
        proptest::prop_assert!(r.chars().count() <= max);
    }
}

#[test]
fn a_failing_data_action_has_its_own_shape() {
    let body = br#"{"errorCode":"bad.request","status":400,"correlationId":"c-77",
        "entityName":"Lookup","userMessage":"contactId is required",
        "userParams":[{"key":"field","value":"contactId"}],
        "details":[{"errorCode":"bad.request"}],"errors":[]}"#;
    let e = ApiError::from_response(StatusCode::BAD_REQUEST, None, body);
    assert_eq!(e.code(), Some("bad.request"));
    assert_eq!(e.message(), "contactId is required");
    assert_eq!(e.context_id(), Some("c-77"));
    let b = e.body().unwrap();
    assert_eq!(b.entity_name.as_deref(), Some("Lookup"));
    assert_eq!(b.details[0].error_code.as_deref(), Some("bad.request"));
    assert!(e.to_string().contains("bad.request"), "{e}");
    // A shape the parser does not expect for userParams is kept, not a failure.
    let e = ApiError::from_response(
        StatusCode::BAD_REQUEST,
        None,
        br#"{"errorCode":"x","userParams":{"odd":true}}"#,
    );
    assert_eq!(e.code(), Some("x"));
}
