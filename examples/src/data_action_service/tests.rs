//! Tests of `data_action_service`.
use super::*;

#[test]
fn the_canonical_form_ignores_key_order_and_placement() {
    let a =
        parse_invocation(br#"{"input_payload":{"b":1,"a":{"y":2,"x":1}},"idempotency_key":"k"}"#)
            .unwrap();
    let b = parse_invocation(br#"{ "input_payload" : { "a" : {"x":1,"y":2}, "b" : 1 } }"#).unwrap();
    assert_eq!(a.key.as_deref(), Some("k"));
    assert_eq!(b.key, None);
    let bytes = |i: Invocation| serde_json::to_vec(&canonical(Value::Object(i.input))).unwrap();
    assert_eq!(bytes(a), bytes(b));
}

#[test]
fn malformed_bodies_say_what_to_send() {
    for (body, says) in [
        (&b"not json"[..], "not JSON"),
        (b"[1]", "JSON object"),
        (b"{}", "input_payload\" is required"),
        (br#"{"input_payload":[1]}"#, "must be a JSON object"),
        (
            br#"{"input_payload":{},"idempotency_key":7}"#,
            "non-empty string",
        ),
        (
            br#"{"input_payload":{},"input":{}}"#,
            "unknown field \"input\"",
        ),
    ] {
        let message = parse_invocation(body).err().expect("refused");
        assert!(message.contains(says), "{message}");
    }
}

#[test]
fn only_completed_and_maybe_ran_answers_are_stored() {
    assert!(is_stored(StatusCode::OK));
    assert!(is_stored(StatusCode::GATEWAY_TIMEOUT));
    for status in [400, 409, 413, 422, 500, 502, 503] {
        assert!(
            !is_stored(StatusCode::from_u16(status).unwrap()),
            "{status}"
        );
    }
}

/// What Genesys Cloud's answer says about the action, kept under the key when it may have run.
#[test]
fn a_408_or_an_earlier_attempt_that_may_have_run_is_outcome_unknown() {
    let code = |e: GenesysError| {
        let response = genesys_error(&e);
        let status = response.status();
        let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
            response.into_body(),
        ))
        .unwrap()
        .unwrap()
        .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (
            status,
            body["error"].as_str().unwrap().to_owned(),
            body["action_may_have_run"].clone(),
        )
    };
    let api = |status: u16| {
        GenesysError::from(genesys_client::ApiError::from_response(
            StatusCode::from_u16(status).unwrap(),
            None,
            b"{}",
        ))
    };
    assert_eq!(
        code(api(408)),
        (
            StatusCode::GATEWAY_TIMEOUT,
            "outcome_unknown".to_owned(),
            serde_json::json!(true)
        )
    );
    assert!(is_stored(StatusCode::GATEWAY_TIMEOUT));
    assert_eq!(
        code(api(503)),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "genesys_unavailable".to_owned(),
            serde_json::json!(false)
        )
    );
    assert_eq!(code(api(400)).1, "genesys_rejected");
}
