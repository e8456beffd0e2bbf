//! Integration config: read it, and write it back with its version (a stale version is refused).
//!
//! ```text
//! cargo run -p examples --example integration_config
//! ```
//!
//! On a real org set `GENESYS_INTEGRATION_ID`; the example only reads there, unless
//! `GENESYS_EXAMPLE_WRITE=1` (it then writes the config back unchanged but for its notes).

mod common;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = common::connect(|sim| sim.users(1), |client| client).await?;
    let client = &target.client;
    let id = match (&target.sim, common::env("GENESYS_INTEGRATION_ID")) {
        (_, Some(id)) => id,
        (Some(sim), None) => sim.integration_ids()[0].clone(),
        (None, None) => {
            println!("set GENESYS_INTEGRATION_ID to read an integration's config on a real org");
            return Ok(());
        }
    };

    let mut config = client.get_integration_config(&id).await?;
    println!(
        "{id}: {:?}, version {}, properties {}",
        config.name, config.version, config.properties
    );

    let write = !target.is_real() || common::env("GENESYS_EXAMPLE_WRITE").as_deref() == Some("1");
    if write {
        let stale = config.clone();
        config.notes = Some("touched by the integration_config example".into());
        let stored = client.put_integration_config(&id, &config).await?;
        println!("written: version {} -> {}", config.version, stored.version);

        // Writing with the old version again is a conflict, as the real API answers it.
        match client.put_integration_config(&id, &stale).await {
            Err(e) if e.api().is_some_and(|a| a.is_version_conflict()) => {
                println!("a stale write is refused: {e}")
            }
            other => println!("unexpected: {other:?}"),
        }
    }
    target.close().await;
    Ok(())
}
