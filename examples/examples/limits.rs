//! Organization limits: read a namespace's limits, and pace the client by the org's own rate
//! limit instead of the documented 300 requests per 60 s.
//!
//! ```text
//! cargo run -p examples --example limits
//! ```

mod common;

use std::time::Duration;

use genesys_client::GenesysClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = common::connect(
        |sim| {
            sim.users(1)
                .rate_limit(Some((600, Duration::from_secs(60))))
        },
        |client| client,
    )
    .await?;
    let client = &target.client;

    let namespace =
        common::env("GENESYS_LIMITS_NAMESPACE").unwrap_or_else(|| "platform.api".into());
    let limits = client.organization_limits(&namespace).await?;
    println!("limits in {}:", limits.namespace);
    for limit in &limits.limits {
        println!("  {:<45} {}", limit.key, limit.value);
    }

    // The builder can read the rate limit itself and pace by it (falling back to 300/60 s).
    let builder = match &target.sim {
        Some(sim) => GenesysClient::builder()
            .base_url(sim.base_url())
            .client_credentials("demo-client", "demo-secret"),
        None => {
            let region = common::env("GENESYS_REGION").unwrap_or_default();
            let mut b = GenesysClient::builder().client_credentials(
                common::env("GENESYS_CLIENT_ID").unwrap_or_default(),
                common::env("GENESYS_CLIENT_SECRET").unwrap_or_default(),
            );
            b = match common::env("GENESYS_BASE_URL") {
                Some(url) => b.base_url(url),
                None => b.region(region.parse()?),
            };
            b
        }
    };
    let builder = builder.discover_limits().await?;
    println!(
        "pacing chosen by discover_limits: {:?}",
        builder.pacing_setting()
    );
    target.close().await;
    Ok(())
}
