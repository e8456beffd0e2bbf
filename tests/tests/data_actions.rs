//! Data actions end to end: never executed twice, and unknown outcomes reported as such.

use std::collections::HashMap;
use std::time::Duration;

use genesys_client::{GenesysClient, GenesysError};
use genesys_sim::{ECHO_ACTION_ID, SimConfig};
use serde_json::json;
use tests::{client_for, payload_hash, spawn};

/// 400 executions with 5 % of connections reset after the action ran: the ledger holds at most
/// one execution per call; every success is in it; every call whose answer was lost is reported
/// as `OutcomeUnknown` (not retried into a duplicate, not reported as a plain failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_are_never_duplicated_and_unknown_outcomes_are_reported() {
    const CALLS: usize = 400;
    let sim = spawn(
        SimConfig::default()
            .users(1)
            .rate_limit(None)
            .faults("reset-after=0.05".parse().unwrap())
            .seed(9),
    )
    .await;
    let client = client_for(&sim)
        .retry_policy(
            GenesysClient::retry_policy_builder()
                .base_delay(Duration::from_millis(5))
                .build(),
        )
        .no_pacing()
        .build()
        .unwrap();

    let mut tasks = Vec::new();
    for call in 0..CALLS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let input = json!({"call": call, "note": "exactly once please"});
            let result = client.execute_action(ECHO_ACTION_ID, &input).await;
            (
                payload_hash(&serde_json::to_vec(&input).unwrap()),
                input,
                result,
            )
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }

    let mut executed: HashMap<String, usize> = HashMap::new();
    for e in sim.ledger() {
        if e.entity == ECHO_ACTION_ID {
            *executed.entry(e.payload_hash).or_default() += 1;
        }
    }
    let (mut ok, mut unknown, mut unknown_executed) = (0, 0, 0);
    for (hash, input, result) in &outcomes {
        let n = executed.get(hash).copied().unwrap_or(0);
        assert!(n <= 1, "call {input} executed {n} times");
        match result {
            Ok(output) => {
                assert_eq!(output, input, "the echo action answers its input");
                assert_eq!(n, 1, "a success is in the ledger");
                ok += 1;
            }
            Err(e @ GenesysError::OutcomeUnknown { .. }) => {
                assert!(e.is_outcome_unknown());
                assert!(e.to_string().contains("outcome unknown"), "{e}");
                unknown += 1;
                unknown_executed += n;
            }
            Err(e) => panic!("call {input} failed otherwise: {e}"),
        }
    }
    assert!(unknown > 0, "the faults never hit: {:?}", sim.stats());
    assert_eq!(ok + unknown, CALLS);
    assert_eq!(executed.values().sum::<usize>(), ok + unknown_executed);
    eprintln!("{ok} executed, {unknown} unknown ({unknown_executed} of them executed)");
    sim.shutdown().await;
}

/// A gateway in front of Genesys that lets the action run, then loses its answer and says 502:
/// the call is reported as an unknown outcome (with the 502's details), never retried into a
/// second execution. A GET through the same gateway is retried as usual.
#[tokio::test]
async fn a_gateway_error_after_the_action_ran_is_an_unknown_outcome_not_a_retry() {
    use genesys_client::{Body, BoxError};
    use http::{Request, Response, StatusCode};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let sim = spawn(SimConfig::default().users(1).rate_limit(None)).await;
    let hyper: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    // The first two API answers are lost behind a 502; later ones pass.
    let lost = Arc::new(AtomicUsize::new(0));
    let gateway = {
        let lost = lost.clone();
        tower::service_fn(move |req: Request<Body>| {
            let (hyper, lost) = (hyper.clone(), lost.clone());
            async move {
                let api = req.uri().path().starts_with("/api/");
                let res = hyper.request(req).await.map_err(BoxError::from)?;
                if api && lost.fetch_add(1, Ordering::SeqCst) < 2 {
                    let bad = Response::builder()
                        .status(StatusCode::BAD_GATEWAY)
                        .header("content-type", "application/json")
                        .body(Body::from(
                            r#"{"status":502,"code":"bad.gateway","message":"upstream lost"}"#,
                        ))?;
                    return Ok::<_, BoxError>(bad);
                }
                Ok(res.map(Body::new))
            }
        })
    };
    let client = client_for(&sim)
        .service(gateway)
        .retry_policy(
            GenesysClient::retry_policy_builder()
                .base_delay(Duration::from_millis(1))
                .build(),
        )
        .build()
        .unwrap();

    let err = client
        .execute_action(ECHO_ACTION_ID, &json!({"charge": 1}))
        .await
        .unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    assert!(err.to_string().contains("outcome unknown"), "{err}");
    let api = err.api().expect("the 502 behind it");
    assert_eq!(api.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        executions(&sim),
        1,
        "the action ran once and was not replayed"
    );

    // An idempotent read behind the same gateway: the 502 is retried, the read succeeds.
    let id = sim.user_ids()[0].clone();
    assert_eq!(client.get_user(&id).await.unwrap().id, id);
    assert_eq!(
        lost.load(Ordering::SeqCst),
        3,
        "action, then a lost read and its retry"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn test_runs_report_their_steps() {
    let sim = spawn(SimConfig::default().users(1).rate_limit(None)).await;
    let client = client_for(&sim).build().unwrap();
    let result = client
        .test_action(ECHO_ACTION_ID, &json!({"x": 1}))
        .await
        .unwrap();
    assert!(result.success);
    assert_eq!(result.final_result, Some(json!({"x": 1})));
    assert!(!result.operations.is_empty());

    let err = client
        .execute_action("no-such-action", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(http::StatusCode::NOT_FOUND));
    sim.shutdown().await;
}

/// A request of the caller's own, marked unsafe to repeat, answered with a gateway's 504 after
/// the work ran: `call` reports the outcome as unknown, as `execute_action` does, with the 504
/// behind it; the same request unmarked gets the 504 as it came.
#[tokio::test]
async fn a_raw_call_marked_unsafe_reports_a_gateway_error_as_an_unknown_outcome() {
    use genesys_client::Body;
    use genesys_tower::retry::RetrySafety;
    use http::{Method, Request, StatusCode};

    let sim = with_fault("504-after=1").await;
    let client = client_for(&sim).build().unwrap();
    let request = |marked: bool| {
        let builder = Request::builder()
            .method(Method::POST)
            .uri(format!(
                "/api/v2/integrations/actions/{ECHO_ACTION_ID}/execute"
            ))
            .header("content-type", "application/json");
        let builder = match marked {
            true => builder.extension(RetrySafety::Unsafe),
            false => builder,
        };
        builder.body(Body::from(r#"{"charge":1}"#)).unwrap()
    };
    let err = client.call(request(true)).await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    assert!(err.may_have_been_applied());
    assert_eq!(
        err.api().map(|a| a.status()),
        Some(StatusCode::GATEWAY_TIMEOUT)
    );
    assert!(
        !err.is_gateway_error(),
        "reported as what it is, not as a plain 504"
    );
    let err = client.call(request(false)).await.unwrap_err();
    assert!(!err.is_outcome_unknown(), "{err}");
    assert_eq!(err.status(), Some(StatusCode::GATEWAY_TIMEOUT));

    // Marked by the retry policy's rule rather than by the caller: the same.
    let ruled = client_for(&sim)
        .retry_policy(
            GenesysClient::retry_policy_builder()
                .safety(|parts| {
                    let action = parts.uri.path().ends_with("/execute");
                    action.then_some(RetrySafety::Unsafe)
                })
                .build(),
        )
        .build()
        .unwrap();
    let before = sim.ledger_len();
    let err = ruled.call(request(false)).await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    assert!(err.may_have_been_applied());
    assert_eq!(sim.ledger_len(), before + 1, "run once, not sent again");

    // Marked by the caller, under a policy whose classifier retries gateway errors as answers
    // (not Genesys's): still an unknown outcome once the answer comes back.
    let plain = client_for(&sim)
        .retry_policy(
            genesys_tower::retry::RetryPolicy::builder()
                .base_delay(Duration::from_millis(1))
                .build(),
        )
        .build()
        .unwrap();
    let err = plain.call(request(true)).await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    sim.shutdown().await;
}

/// A CDN in front of the API answers 520 (its own HTML page) after the action ran: a 5xx
/// outside the usual three is an unknown outcome too, never "failed, safe to send again".
#[tokio::test]
async fn a_cdns_520_after_the_action_ran_is_an_unknown_outcome() {
    let sim = with_fault("520-after=1").await;
    let client = client_for(&sim).build().unwrap();
    let err = client
        .execute_action(ECHO_ACTION_ID, &json!({"charge": 1}))
        .await
        .unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    assert!(err.may_have_been_applied());
    assert_eq!(err.api().map(|a| a.status().as_u16()), Some(520));
    assert_eq!(
        executions(&sim),
        1,
        "the action ran once and was not replayed"
    );
}

/// A simulator without a quota, whose every API answer meets `fault`.
async fn with_fault(fault: &str) -> genesys_sim::SimHandle {
    spawn(
        SimConfig::default()
            .users(1)
            .rate_limit(None)
            .faults(fault.parse().unwrap()),
    )
    .await
}

/// How many times the echo action ran.
fn executions(sim: &genesys_sim::SimHandle) -> usize {
    sim.ledger()
        .iter()
        .filter(|e| e.entity == ECHO_ACTION_ID)
        .count()
}
