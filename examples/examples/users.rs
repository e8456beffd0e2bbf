//! Users: list a page as a stream, read one, and update it the way the real API needs (GET the
//! version, PATCH with it, re-read and re-apply on a conflict), through injected faults.
//!
//! ```text
//! cargo run -p examples --example users
//! ```
//!
//! On a real org (`GENESYS_CLIENT_ID`, `GENESYS_CLIENT_SECRET`, `GENESYS_REGION`) it only reads,
//! unless `GENESYS_EXAMPLE_USER_ID` names a user to rename (to the name it already has plus
//! " (example)").

mod common;

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Map, Value};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = common::connect(
        |sim| {
            sim.users(120)
                .faults(
                    "5xx=0.05,reset-before=0.01,reset-after=0.01"
                        .parse()
                        .expect("a valid spec"),
                )
                .seed(1)
        },
        |client| client.pacing(50, Duration::from_secs(1)),
    )
    .await?;
    let client = &target.client;

    // The stream fetches pages as it is polled: take 5 users, and only the first page is read.
    let first: Vec<_> = client.list_users(25).take(5).try_collect().await?;
    for user in &first {
        println!(
            "{}  {:<30}  version {}",
            user.id,
            user.name.as_deref().unwrap_or("-"),
            user.version
        );
    }
    let all = client
        .list_users(100)
        .try_fold(0usize, |n, _| async move { Ok(n + 1) })
        .await?;
    println!("{all} users in all");

    let to_update = match (&target.sim, common::env("GENESYS_EXAMPLE_USER_ID")) {
        (_, Some(id)) => Some(id),
        (Some(_), None) => first.first().map(|u| u.id.clone()),
        (None, None) => None,
    };
    if let Some(id) = to_update {
        let before = client.get_user(&id).await?;
        let name = format!("{} (example)", before.name.clone().unwrap_or_default());
        let mut fields = Map::new();
        fields.insert("name".into(), Value::String(name.clone()));
        let after = client.update_user(&id, fields).await?;
        println!(
            "renamed {id}: {:?} -> {:?}, version {} -> {}",
            before.name, after.name, before.version, after.version
        );
    } else {
        println!("read only: set GENESYS_EXAMPLE_USER_ID to try an update on a real org");
    }

    let m = client.metrics().snapshot();
    println!(
        "{} calls, {} attempts, {} retries ({} for 5xx, {} ambiguous), {} token fetches",
        m.requests,
        m.attempts,
        m.retries.total(),
        m.retries.server_error,
        m.retries.ambiguous,
        m.token_fetches
    );
    target.close().await;
    Ok(())
}
