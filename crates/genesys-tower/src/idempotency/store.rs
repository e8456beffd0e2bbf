//! The store trait shared by the client and the server layer, and the types it speaks.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Fingerprint, IDEMPOTENT_REPLAYED};
use crate::{Body, BoxError};

/// The future a store method returns: boxed, so that stores can be used as
/// `Arc<dyn IdempotencyStore>` and the layers need no type parameter for them.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where idempotency records live: in memory ([`MemoryStore`](super::MemoryStore)), in Redis
/// (`RedisStore`, feature `redis`), or your own.
///
/// A record for a key goes through three states: absent, *claimed* (by one caller, under a
/// lease that the caller renews while it works), and *completed* (a [`StoredResponse`] kept for
/// the retention period).
///
/// - [`claim`](IdempotencyStore::claim) atomically takes an absent key and returns a
///   [`ClaimToken`]; otherwise it reports what is there. A key whose record has another
///   fingerprint is a [`Claim::Mismatch`]. A claim whose lease ended without a response is
///   *abandoned*: its owner crashed, hung or lost the store, and nobody knows whether its work was
///   done. It is kept for [`ClaimOptions::hold_abandoned`] (reported as [`Claim::Abandoned`]),
///   then the key is absent again.
/// - [`renew`](IdempotencyStore::renew) extends the lease while the owner still works.
/// - [`complete`](IdempotencyStore::complete) stores the response if the token still owns the
///   claim, lease ended or not, or if the record is gone (the store lost it): the owner holds the
///   true answer, and nobody else holds the key.
/// - [`release`](IdempotencyStore::release) drops the claim, only if the token still owns it, so
///   that the key can be claimed again (a failure that must not be remembered).
/// - [`wait`](IdempotencyStore::wait) returns when the record may have changed, so that a caller
///   that found the key in flight can look again.
///
/// Methods return boxed futures ([`StoreFuture`]) rather than `async fn`, so that the trait is
/// object safe: the layers hold an `Arc<dyn IdempotencyStore>`. One allocation per store call is
/// nothing next to an HTTP round trip.
///
/// Stores are shared: clones of a store (and of a layer that holds it) see the same records.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for a request with `fingerprint`, under a lease of `options.lease()`.
    ///
    /// A claim whose `Acquired` answer never reaches the caller (the future dropped, its caller
    /// gone or timed out, or an error after the claim may have been made) is owned by no one:
    /// a store whose claim can be made after such a point should release it (as
    /// [`RedisStore`](super::RedisStore) does, in the background), or the key waits out the
    /// lease.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        fingerprint: Fingerprint,
        options: ClaimOptions,
    ) -> StoreFuture<'a, Claim>;

    /// Extends the lease of `token`'s claim to `options.lease()` from now (the hold of an
    /// abandoned claim counts from the new end of the lease).
    ///
    /// Returns `false` when the claim is no longer `token`'s (another caller took the key over,
    /// or it completed), and an error when the store could not tell (it was not reached, or
    /// the renewal reached it after its deadline): the owner may then renew again.
    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        options: ClaimOptions,
    ) -> StoreFuture<'a, bool>;

    /// Stores `response` for `key`, kept for `retention`, if `token` still owns the claim (even
    /// past its lease), or if there is no record for `key` at all.
    ///
    /// Returns `false`, and stores nothing, when another caller holds the key or a response is
    /// already stored.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        response: StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Drops the claim on `key` if `token` still owns it; nothing is stored.
    fn release<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> StoreFuture<'a, ()>;

    /// Returns when the record for `key` may have changed, and at the latest after `max_wait`.
    ///
    /// The default sleeps for `max_wait`, capped at 50 ms: a polling store. A store that can tell
    /// when a record changes (the memory store) returns as soon as it does.
    fn wait<'a>(&'a self, key: &'a str, max_wait: Duration) -> StoreFuture<'a, ()> {
        let _ = key;
        Box::pin(async move {
            tokio::time::sleep(max_wait.min(Duration::from_millis(50))).await;
            Ok(())
        })
    }
}

/// How a key is claimed: the lease, how long an abandoned claim is held, and the latest time
/// the store may still act on the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimOptions {
    lease: Duration,
    hold: Duration,
    not_after: Option<SystemTime>,
}

impl ClaimOptions {
    /// A claim under a lease of `lease`, taken over by the next caller as soon as the lease ends
    /// without renewal (no hold), acted on whenever the store receives it.
    #[must_use]
    pub fn new(lease: Duration) -> Self {
        ClaimOptions {
            lease,
            hold: Duration::ZERO,
            not_after: None,
        }
    }

    /// Keeps a claim whose lease ended without a response for `hold` more: callers in that time
    /// get [`Claim::Abandoned`] instead of running the request a second time. The server layer
    /// holds for the retention period, because an owner that crashed may have done the work.
    #[must_use]
    pub fn hold_abandoned(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// A store that receives the claim after `deadline` (by its own clock) does nothing and
    /// fails the call: the caller stopped waiting by then. A remote store needs this, because a
    /// claim sent to a server that was paused runs when the server resumes, long after its
    /// caller answered: it must not lock the key then.
    #[must_use]
    pub fn not_after(mut self, deadline: SystemTime) -> Self {
        self.not_after = Some(deadline);
        self
    }

    /// The lease.
    #[must_use]
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How long an abandoned claim is held after its lease.
    #[must_use]
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// The latest time the store may act on the claim, if any.
    #[must_use]
    pub fn deadline(&self) -> Option<SystemTime> {
        self.not_after
    }
}

impl From<Duration> for ClaimOptions {
    fn from(lease: Duration) -> Self {
        ClaimOptions::new(lease)
    }
}

impl<T: IdempotencyStore + ?Sized> IdempotencyStore for Arc<T> {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        fingerprint: Fingerprint,
        options: ClaimOptions,
    ) -> StoreFuture<'a, Claim> {
        (**self).claim(key, fingerprint, options)
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        options: ClaimOptions,
    ) -> StoreFuture<'a, bool> {
        (**self).renew(key, token, options)
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        response: StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).complete(key, token, response, retention)
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> StoreFuture<'a, ()> {
        (**self).release(key, token)
    }

    fn wait<'a>(&'a self, key: &'a str, max_wait: Duration) -> StoreFuture<'a, ()> {
        (**self).wait(key, max_wait)
    }
}

/// What [`IdempotencyStore::claim`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Claim {
    /// The key is ours: run the request, then [`complete`](IdempotencyStore::complete) or
    /// [`release`](IdempotencyStore::release) with this token.
    Acquired(ClaimToken),
    /// Another caller holds the key with the same fingerprint and has not finished.
    InFlight,
    /// The key was completed with the same fingerprint: here is the response.
    Completed(StoredResponse),
    /// The key was claimed with the same fingerprint by a caller that is gone: its lease ended
    /// without a response (it crashed, hung, or could not reach the store to save the response),
    /// and the claim is held ([`ClaimOptions::hold_abandoned`]). Its work may or may not have
    /// been done: running the request again could do it twice.
    Abandoned,
    /// The store lost its records (a Redis that restarted without persistence) less than its
    /// quarantine ago and has no record of this key: the key may have been completed before the
    /// loss, so running the request could do its work twice.
    Lost,
    /// The key is in flight or completed with another fingerprint: the same key was used for a
    /// different request.
    Mismatch,
    /// The key was completed with the same fingerprint, within its retention, but its response
    /// was dropped to keep the store within its size ([`MemoryStore`](super::MemoryStore)): the
    /// work was done, and running the request again would do it twice.
    Evicted,
}

/// Proof of a claim: an id unique to one claim, and the fingerprint it was made with.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimToken {
    id: String,
    fingerprint: Fingerprint,
}

impl ClaimToken {
    /// A new token with a random (UUID v4) id.
    #[must_use]
    pub fn new(fingerprint: Fingerprint) -> Self {
        ClaimToken {
            id: uuid::Uuid::new_v4().simple().to_string(),
            fingerprint,
        }
    }

    /// The token's id, unique to one claim.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The fingerprint of the request that made the claim.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

impl fmt::Debug for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimToken")
            .field("id", &self.id)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// A store failed: unreachable, timed out, or returned something it should not have.
///
/// The server layer answers 503 with this message (or calls the handler anyway when configured to
/// fail open); the client layer returns it as its error.
#[derive(Debug)]
pub struct StoreError {
    source: BoxError,
}

impl StoreError {
    /// Wraps the cause.
    pub fn new(source: impl Into<BoxError>) -> Self {
        StoreError {
            source: source.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "idempotency store unavailable: {}", self.source)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A final response kept for replay: status, headers and body.
///
/// Hop-by-hop headers (`Connection`, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`) and `Idempotent-Replayed` are not kept: they describe one
/// connection or one replay, not the response. Every other header is kept as it was, `Set-Cookie`
/// included, because a replay must be the original response: treat the store like a session store
/// and keep it private.
///
/// It serializes with serde (the body as bytes); [`encode`](StoredResponse::encode) gives a compact,
/// binary-safe form (a JSON head line, then the raw body) that the Redis store uses.
#[derive(Clone, PartialEq)]
pub struct StoredResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

impl StoredResponse {
    /// A response to keep; hop-by-hop headers are dropped.
    pub fn new(status: StatusCode, mut headers: HeaderMap, body: Bytes) -> Self {
        for name in HOP_BY_HOP
            .iter()
            .chain([&header::UPGRADE, &IDEMPOTENT_REPLAYED])
        {
            headers.remove(name);
        }
        headers.remove("proxy-connection");
        StoredResponse {
            status,
            headers,
            body,
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The response as it was, marked `Idempotent-Replayed: true`.
    pub fn to_replay(&self) -> Response<Body> {
        let mut response = Response::new(Body::from_bytes(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        response
    }

    /// Bytes of memory the response holds, roughly: body plus headers.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>()
    }

    /// A compact, binary-safe encoding: one line of JSON (status and headers), then the raw body.
    pub fn encode(&self) -> Vec<u8> {
        let head = Head::from(self);
        // Compact JSON never contains a raw newline, so the first newline ends the head.
        let mut out = serde_json::to_vec(&head).expect("a head of strings always serializes");
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads what [`encode`](StoredResponse::encode) wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let split = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| StoreError::new("stored response has no head line"))?;
        let head: Head = serde_json::from_slice(&bytes[..split])
            .map_err(|e| StoreError::new(format!("stored response head is malformed: {e}")))?;
        head.into_response(Bytes::copy_from_slice(&bytes[split + 1..]))
    }
}

impl fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bodies and some headers (Set-Cookie) may be secrets: show the shape only.
        f.debug_struct("StoredResponse")
            .field("status", &self.status)
            .field("header_names", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Head {
    status: u16,
    headers: Vec<(String, HeaderText)>,
}

/// A header value: text when it is valid UTF-8 (nearly always), bytes otherwise.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum HeaderText {
    Text(String),
    Bytes(Vec<u8>),
}

impl From<&StoredResponse> for Head {
    fn from(r: &StoredResponse) -> Self {
        Head {
            status: r.status.as_u16(),
            headers: r
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = match value.to_str() {
                        Ok(text) => HeaderText::Text(text.to_owned()),
                        Err(_) => HeaderText::Bytes(value.as_bytes().to_vec()),
                    };
                    (name.as_str().to_owned(), value)
                })
                .collect(),
        }
    }
}

impl Head {
    fn into_response(self, body: Bytes) -> Result<StoredResponse, StoreError> {
        let status = StatusCode::from_u16(self.status)
            .map_err(|_| StoreError::new(format!("stored status {} is invalid", self.status)))?;
        // HeaderMap::with_capacity panics above 32768: a stored head is not trusted that far.
        let mut headers = HeaderMap::with_capacity(self.headers.len().min(64));
        for (name, value) in self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| StoreError::new(format!("stored header name {name:?} is invalid")))?;
            let value = match value {
                HeaderText::Text(text) => HeaderValue::from_str(&text).ok(),
                HeaderText::Bytes(bytes) => HeaderValue::from_bytes(&bytes).ok(),
            }
            .ok_or_else(|| StoreError::new(format!("stored value of {name} is invalid")))?;
            headers
                .try_append(name, value)
                .map_err(|_| StoreError::new("stored response has too many headers"))?;
        }
        Ok(StoredResponse {
            status,
            headers,
            body,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Whole {
    #[serde(flatten)]
    head: Head,
    #[serde(with = "body_bytes")]
    body: Bytes,
}

mod body_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(body: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(body)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        Vec::<u8>::deserialize(d).map(Bytes::from)
    }
}

impl Serialize for StoredResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Whole {
            head: Head::from(self),
            body: self.body.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for StoredResponse {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let whole = Whole::deserialize(d)?;
        whole
            .head
            .into_response(whole.body)
            .map_err(serde::de::Error::custom)
    }
}

/// Runs `work` while renewing a claim's lease every `period` with `renew` (true: still ours), so
/// that work slower than the lease keeps its claim, and a claim whose owner is gone ends one lease
/// after it went. Renewal stops when the claim is no longer ours; `work` always runs to its end.
pub(super) async fn renewing<F, R>(
    period: Duration,
    mut renew: impl FnMut() -> R,
    work: F,
) -> F::Output
where
    F: Future,
    R: Future<Output = Result<bool, StoreError>>,
{
    let heartbeat = async {
        loop {
            tokio::time::sleep(period).await;
            match renew().await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        "idempotency claim lost while its request ran (another caller took the \
                         key over)"
                    );
                    return;
                }
                // The lease may end before the work does: what a repeat is told then is the
                // store's rule for a claim past its lease.
                Err(e) => tracing::warn!(error = %e, "idempotency lease not renewed"),
            }
        }
    };
    let mut work = std::pin::pin!(work);
    tokio::select! {
        biased;
        output = &mut work => output,
        () = heartbeat => work.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert("x-latin1", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        StoredResponse::new(
            StatusCode::CREATED,
            headers,
            Bytes::from_static(b"{\"a\":1}\n\0\xff"),
        )
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let r = sample();
        assert!(r.headers().get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(r.headers().get_all("x-multi").iter().count(), 2);
    }

    #[test]
    fn encoding_round_trips_binary_bodies_and_odd_headers() {
        let r = sample();
        assert_eq!(StoredResponse::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn serde_round_trips() {
        let r = sample();
        let json = serde_json::to_string(&r).unwrap();
        let back: StoredResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn debug_does_not_show_the_body() {
        let r = sample();
        assert!(!format!("{r:?}").contains("\"a\""));
    }

    #[test]
    fn a_head_with_too_many_headers_does_not_panic() {
        let pairs: Vec<String> = (0..40_000).map(|i| format!("[\"x-{i}\",\"v\"]")).collect();
        let bytes = format!("{{\"status\":200,\"headers\":[{}]}}\nbody", pairs.join(","));
        // A HeaderMap holds at most 32768 entries: refused with a message, not a panic.
        let err = StoredResponse::decode(bytes.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("too many headers"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(3000)))]

        #[test]
        fn any_stored_bytes_decode_without_panic(
            head in "\\{\"status\":[0-9]{1,6},\"headers\":\\[(\\[\"[ -~]{0,6}\",(\"[ -~]{0,6}\"|\\[[0-9]{1,3}(,[0-9]{1,3}){0,3}\\])\\],?){0,4}\\]\\}",
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let _ = StoredResponse::decode(format!("{head}\nbody").as_bytes());
            let _ = StoredResponse::decode(&raw);
        }
    }
}
