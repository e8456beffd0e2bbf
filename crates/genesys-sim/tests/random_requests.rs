//! Random requests: whatever a client sends (paths, queries, credentials, bodies, numbers), the
//! simulator answers with a status and keeps serving. A bounded number of cases, so that
//! `cargo test` stays fast.

mod common;

use common::{send, token};
use genesys_sim::{SimConfig, Simulator};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("0".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        "[a-zA-Z0-9%._~-]{0,12}",
    ];
    let query = prop_oneof![
        Just(String::new()),
        "\\?(pageSize|pageNumber|flatten)=[-+0-9a-z.%]{0,22}(&(pageSize|pageNumber)=[-+0-9e.]{0,22})?",
    ];
    (
        prop_oneof![
            Just("/api/v2/users"),
            Just("/api/v2/users/{}"),
            Just("/api/v2/integrations/actions/{}/execute"),
            Just("/api/v2/integrations/actions/{}/test"),
            Just("/api/v2/integrations/{}/config/current"),
            Just("/api/v2/organizations/limits/namespaces/{}"),
            Just("/api/v2/dataexchange/ingestion"),
            Just("/oauth/token"),
            Just("/{}"),
        ],
        segment,
        query,
    )
        .prop_map(|(template, segment, query)| {
            format!("{}{query}", template.replace("{}", &segment))
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        Just(br#"{"version":18446744073709551615,"name":"x"}"#.to_vec()),
        Just(br#"{"version":-1,"properties":{}}"#.to_vec()),
        Just(br#"{"version":1e300}"#.to_vec()),
        Just(br#"[{"external_id":"a","duration_seconds":1e400}]"#.to_vec()),
        Just(b"grant_type=client_credentials&client_id=%zz&client_secret=%".to_vec()),
        "\\{\"[a-z]{1,8}\":(-?[0-9]{1,25}|\"[^\"]{0,10}\"|null|true|\\[\\])\\}"
            .prop_map(String::into_bytes),
    ]
}

#[test]
fn any_request_gets_a_status_and_the_simulator_keeps_serving() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sim, good) = rt.block_on(async {
        let sim = Simulator::spawn(SimConfig::default().users(3))
            .await
            .unwrap();
        let good = token(&sim.base_url()).await;
        (sim, good)
    });
    let base = sim.base_url();
    let cases = std::env::var("GENESYS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let strategy = (
        prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("PATCH"),
            Just("PUT"),
            Just("DELETE")
        ],
        path(),
        prop_oneof![
            Just(format!("Bearer {good}")),
            Just("Bearer nope".to_owned()),
            Just("Basic ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ=".to_owned()),
            Just("Basic !!!".to_owned()),
            "[ -~]{0,30}",
        ],
        body(),
    );
    runner
        .run(&strategy, |(method, path, auth, body)| {
            let answer = rt.block_on(send(
                &base,
                method,
                &path,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body,
            ));
            match answer {
                Ok(r) => prop_assert!(
                    (200..600).contains(&r.status),
                    "{method} {path}: {}",
                    r.status
                ),
                Err(e) => prop_assert!(false, "{method} {path}: no answer: {e}"),
            }
            Ok(())
        })
        .unwrap();
    // Still serving.
    rt.block_on(async {
        token(&base).await;
    });
}
