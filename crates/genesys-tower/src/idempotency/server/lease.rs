//! A claim's life after it is acquired: its lease renewed while the handler works, then settled
//! (completed or released), later in the background if the store cannot be reached at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::super::store::{ClaimOptions, StoreError, StoredResponse};
use super::super::{ClaimToken, IdempotencyStore};
use super::layer::Config;

/// The claim options of the layer's claims and renewals. A claim that reaches the store after
/// half the store timeout does nothing, so that its answer still has the other half to come
/// back before the layer stops waiting for it.
pub(super) fn claim_options(config: &Config) -> ClaimOptions {
    let hold = if config.rerun_abandoned {
        Duration::ZERO
    } else {
        config.retention
    };
    let options = ClaimOptions::new(config.lock_ttl).hold_abandoned(hold);
    // A store timeout past the clock's range sets no latest moment at all.
    match SystemTime::now().checked_add(config.store_timeout / 2) {
        Some(at) => options.not_after(at),
        None => options,
    }
}

/// A store call bounded by the layer's store timeout.
pub(super) async fn bounded<T>(
    config: &Config,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(config.store_timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::new(format!(
            "no answer within {:?} (the store timeout)",
            config.store_timeout
        ))),
    }
}

/// Runs `work` while renewing `token`'s lease every third of it, so that a handler slower than
/// the lease keeps its claim, and a claim whose owner is gone ends one lease after it went.
pub(super) async fn renewing<F: Future>(
    config: &Config,
    key: &str,
    token: &ClaimToken,
    work: F,
) -> F::Output {
    let period = (config.lock_ttl / 3).max(Duration::from_millis(10));
    let renew = || {
        bounded(
            config,
            config.store.renew(key, token, claim_options(config)),
        )
    };
    super::super::store::renewing(period, renew, work).await
}

/// What becomes of a claim once the handler is done.
#[derive(Clone)]
pub(super) enum Settle {
    /// Its response, to replay to every repeat.
    Complete(StoredResponse),
    /// Nothing to remember: the key may run again.
    Release,
}

/// Settles a claim whose call is dropped before it settled it itself (its client went away):
/// released when the handler had not started (nothing ran), its answer kept when it was in hand
/// already; left to its lease when the handler was running (its effect unknown: the claim is
/// then held as abandoned, as after a crash).
pub(super) struct SettleOnDrop<'a> {
    config: &'a Config,
    key: &'a str,
    token: Option<ClaimToken>,
    started: &'a AtomicBool,
    answer: Option<Settle>,
}

impl<'a> SettleOnDrop<'a> {
    pub(super) fn new(
        config: &'a Config,
        key: &'a str,
        token: &ClaimToken,
        started: &'a AtomicBool,
    ) -> Self {
        SettleOnDrop {
            config,
            key,
            token: Some(token.clone()),
            started,
            answer: None,
        }
    }

    /// The handler's answer is in hand: a drop from now on settles with it.
    pub(super) fn answered(&mut self, settle: &Settle) {
        self.answer = Some(settle.clone());
    }

    /// Settled by the call itself.
    pub(super) fn disarm(&mut self) {
        self.token = None;
    }
}

impl Drop for SettleOnDrop<'_> {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let outcome = match self.answer.take() {
            Some(answer) => answer,
            None if !self.started.load(Ordering::Relaxed) => Settle::Release,
            // Running: whether it had its effect is unknown; the lease runs out.
            None => return,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let config = Arc::new(self.config.clone());
        let key = self.key.to_owned();
        runtime.spawn(async move { settle(&config, &key, token, outcome).await });
    }
}

/// Settles the claim now; if the store cannot be reached, keeps trying in the background, so
/// that a store that comes back soon gets the answer (until it does, repeats are told the
/// outcome is unknown, never run again).
pub(super) async fn settle(config: &Config, key: &str, token: ClaimToken, settle: Settle) {
    let error = match settle_once(config, key, &token, &settle).await {
        Ok(()) => return,
        Err(e) => e,
    };
    let Ok(permit) = config.pending.clone().try_acquire_owned() else {
        tracing::error!(
            error = %error,
            "idempotency store unavailable and too many answers already waiting for it: this \
             one is not kept; repeats of its key will be told the outcome is unknown"
        );
        return;
    };
    tracing::warn!(
        error = %error,
        "idempotency store unavailable as the handler finished; trying again in the background"
    );
    let config = Arc::new(config.clone());
    let key = key.to_owned();
    tokio::spawn(async move {
        let _permit = permit;
        let give_up = Instant::now() + SETTLE_FOR;
        let mut pause = Duration::from_millis(250);
        loop {
            tokio::time::sleep(pause).await;
            match settle_once(&config, &key, &token, &settle).await {
                Ok(()) => {
                    tracing::info!("idempotency store reached again: answer settled");
                    return;
                }
                Err(e) if Instant::now() >= give_up => {
                    tracing::error!(
                        error = %e,
                        "idempotency answer not kept: the store stayed unavailable; repeats of \
                         its key will be told the outcome is unknown"
                    );
                    return;
                }
                Err(_) => pause = (pause * 2).min(Duration::from_secs(30)),
            }
        }
    });
}

/// How long an answer waits in the background for the store to come back.
const SETTLE_FOR: Duration = Duration::from_secs(15 * 60);

async fn settle_once(
    config: &Config,
    key: &str,
    token: &ClaimToken,
    settle: &Settle,
) -> Result<(), StoreError> {
    let store: &dyn IdempotencyStore = &*config.store;
    match settle {
        Settle::Complete(response) => {
            let call = store.complete(key, token, response.clone(), config.retention);
            if !bounded(config, call).await? {
                tracing::warn!(
                    "idempotency response not stored: another request took the key over after \
                     this one's lease ended (rerun_abandoned)"
                );
            }
        }
        Settle::Release => bounded(config, store.release(key, token)).await?,
    }
    Ok(())
}
