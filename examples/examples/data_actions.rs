//! Data actions: execute and test. The target does not honour `Idempotency-Key`, so a call whose
//! answer is lost is reported as "outcome unknown", never retried into a second execution.
//!
//! ```text
//! cargo run -p examples --example data_actions
//! ```
//!
//! On a real org set `GENESYS_ACTION_ID` (and `GENESYS_ACTION_INPUT`, a JSON object; default
//! `{}`): the example then tests the action once and executes it once.

mod common;

use genesys_client::GenesysError;
use genesys_sim::ECHO_ACTION_ID;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = common::connect(
        |sim| {
            sim.users(1)
                .rate_limit(None)
                .faults(
                    "reset-after=0.05,503-retry-after=0.02"
                        .parse()
                        .expect("a valid spec"),
                )
                .seed(7)
        },
        |client| client.no_pacing(),
    )
    .await?;
    let client = &target.client;

    let (action, input, calls) = if target.is_real() {
        let Some(action) = common::env("GENESYS_ACTION_ID") else {
            println!(
                "set GENESYS_ACTION_ID (and GENESYS_ACTION_INPUT) to run an action on a real org"
            );
            return Ok(());
        };
        let input: Value = serde_json::from_str(
            &common::env("GENESYS_ACTION_INPUT").unwrap_or_else(|| "{}".into()),
        )?;
        (action, input, 1)
    } else {
        (ECHO_ACTION_ID.to_owned(), json!({"greeting": "hello"}), 100)
    };

    let test = client.test_action(&action, &input).await?;
    println!(
        "test: success={} after {} steps, result {}",
        test.success,
        test.operations.len(),
        test.final_result.unwrap_or(Value::Null)
    );

    // A test runs the action too: count the executions from here on.
    let ran_before = target
        .sim
        .as_ref()
        .map_or(0, |sim| sim.ledger_count_for(ECHO_ACTION_ID));
    let (mut ok, mut unknown, mut failed) = (0, 0, 0);
    for call in 0..calls {
        let mut input = input.clone();
        if !target.is_real() {
            input["call"] = json!(call);
        }
        match client.execute_action(&action, &input).await {
            Ok(_) => ok += 1,
            Err(e @ GenesysError::OutcomeUnknown { .. }) => {
                unknown += 1;
                if unknown == 1 {
                    println!("first unknown outcome: {e}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("failed: {e}");
            }
        }
    }
    println!("{calls} executions: {ok} succeeded, {unknown} outcome unknown, {failed} failed");
    if let Some(sim) = &target.sim {
        // The ledger proves it: every success ran once, an unknown ran at most once.
        let ran = sim.ledger_count_for(ECHO_ACTION_ID) - ran_before;
        println!("the simulator ran the action {ran} times ({ok} known + up to {unknown} unknown)");
    }
    target.close().await;
    Ok(())
}
