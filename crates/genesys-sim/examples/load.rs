//! A quick load check: keep-alive connections hammering `GET /api/v2/users/{id}` on an embedded
//! simulator with no faults and no quota, printing requests per second.
//!
//! `cargo run -p genesys-sim --release --example load -- [CONNECTIONS] [SECONDS]`
//! (`docs/simulator.md` records the figures it printed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use genesys_sim::{SimConfig, Simulator};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let conns: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(32);
    let secs: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let sim = Simulator::spawn(SimConfig::default().users(100).rate_limit(None)).await?;
    let addr = sim.addr();

    // One token for everybody.
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::post("/oauth/token")
        .header("host", addr.to_string())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(Bytes::from(
            "grant_type=client_credentials&client_id=demo-client&client_secret=demo-secret",
        )))?;
    let body = tx
        .send_request(req)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let token = serde_json::from_slice::<serde_json::Value>(&body)?["access_token"]
        .as_str()
        .ok_or("no token")?
        .to_string();
    let auth = Arc::new(format!("Bearer {token}"));

    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (auth, done, ids) = (auth.clone(), done.clone(), sim.user_ids());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut i = c;
            while Instant::now() < deadline {
                let req = http::Request::get(format!("/api/v2/users/{}", ids[i % ids.len()]))
                    .header("host", addr.to_string())
                    .header("authorization", auth.as_str())
                    .body(Empty::<Bytes>::new())?;
                tx.ready().await?;
                let resp = tx.send_request(req).await?;
                resp.into_body().collect().await?;
                done.fetch_add(1, Relaxed);
                i += 1;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await??;
    }
    let n = done.load(Relaxed);
    println!(
        "{n} requests over {conns} connections in {:.2?}: {:.0} requests/s",
        start.elapsed(),
        n as f64 / start.elapsed().as_secs_f64()
    );
    sim.shutdown().await;
    Ok(())
}
