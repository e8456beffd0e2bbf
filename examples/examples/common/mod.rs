//! Shared by the endpoint examples: an embedded simulator by default, a real org when
//! `GENESYS_CLIENT_ID`, `GENESYS_CLIENT_SECRET` and `GENESYS_REGION` are set.

#![allow(dead_code)] // each example uses a part

use std::error::Error;

use genesys_client::{GenesysClient, GenesysClientBuilder, Region};
use genesys_sim::{SimConfig, SimHandle, Simulator};

/// What an example talks to.
pub struct Target {
    /// The client.
    pub client: GenesysClient,
    /// The embedded simulator, when no real org was configured.
    pub sim: Option<SimHandle>,
}

impl Target {
    /// Whether this is a real org (writes are then opt-in).
    pub fn is_real(&self) -> bool {
        self.sim.is_none()
    }

    /// Shuts the simulator down, if there is one.
    pub async fn close(self) {
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
    }
}

/// Connects: to a real org when the three environment variables are set (`GENESYS_REGION` is a
/// region name such as `eu-west-1` or a domain such as `mypurecloud.ie`; `GENESYS_BASE_URL`
/// overrides it for a proxy), else to an embedded simulator made by `sim`. `tune` adjusts the
/// client builder either way.
pub async fn connect(
    sim: impl FnOnce(SimConfig) -> SimConfig,
    tune: impl FnOnce(GenesysClientBuilder) -> GenesysClientBuilder,
) -> Result<Target, Box<dyn Error>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let (Some(id), Some(secret), Some(region)) = (
        var("GENESYS_CLIENT_ID"),
        var("GENESYS_CLIENT_SECRET"),
        var("GENESYS_REGION"),
    ) {
        let mut builder = GenesysClient::builder().client_credentials(id, secret);
        builder = match var("GENESYS_BASE_URL") {
            Some(url) => builder.base_url(url),
            None => builder.region(region.parse::<Region>()?),
        };
        println!("talking to the real org in {region}");
        return Ok(Target {
            client: tune(builder).build()?,
            sim: None,
        });
    }
    let handle = Simulator::spawn(sim(SimConfig::default())).await?;
    println!(
        "talking to an embedded simulator at {} (set GENESYS_CLIENT_ID, GENESYS_CLIENT_SECRET and GENESYS_REGION for a real org)",
        handle.base_url()
    );
    let builder = GenesysClient::builder()
        .base_url(handle.base_url())
        .client_credentials("demo-client", "demo-secret");
    Ok(Target {
        client: tune(builder).build()?,
        sim: Some(handle),
    })
}

/// An environment variable, when set and not blank.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
