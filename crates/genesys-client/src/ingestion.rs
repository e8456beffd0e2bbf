//! Record ingestion, as seed 000 describes it: validate, chunk, send each chunk exactly once.
//!
//! `POST /api/v2/dataexchange/ingestion` is **not** an endpoint of the public Genesys Cloud API:
//! seed 000 invented it, and the simulator serves it. The path is configurable
//! ([`IngestionBuilder::path`]) so the same code can post to a real bulk endpoint or to your own
//! service with the same habits.
//!
//! 1. Every record is validated against a JSON Schema before anything is sent; invalid records
//!    come back in the report with their reasons ([`InvalidRecord`]), the rest go on.
//! 2. Valid records are packed into chunks of at most 500 records and 512000 bytes (the documented
//!    `request.bytes.max`), as a JSON array.
//! 3. Each chunk carries its own stable `Idempotency-Key` (`<prefix>-<chunk index>`, the prefix a
//!    UUID drawn once per batch unless you set one). To a target that deduplicates by key (the
//!    default path's, and any you mark with [`IngestionBuilder::deduplicates_by_key`]), a chunk is
//!    marked [`RetrySafety::KeyHonoured`]: the retry layer may send it again after a lost
//!    response, and the second delivery is answered from the target's store instead of being
//!    applied twice. To any other target (a real bulk endpoint of the API: none honours the key),
//!    a chunk is marked [`RetrySafety::Unsafe`]: after an attempt that may have reached the
//!    target, it is never sent again, and fails with an error whose
//!    [`may_have_been_applied`](GenesysError::may_have_been_applied) is true.
//!
//! ```no_run
//! use serde_json::json;
//! # async fn run(client: genesys_client::GenesysClient) -> Result<(), genesys_client::GenesysError> {
//! let ingestion = client
//!     .ingestion()
//!     .schema(genesys_client::ingestion::interaction_record_schema())
//!     .build()?;
//! let report = ingestion
//!     .ingest(vec![json!({"external_id": "TXN-1", "timestamp": "2024-01-01T00:00:00Z",
//!         "channel": "voice", "duration_seconds": 42, "customer_segment": "smb"})])
//!     .await;
//! assert!(report.is_complete());
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{self, StreamExt};
use genesys_tower::idempotency::IDEMPOTENCY_KEY;
use genesys_tower::metrics::Route;
use genesys_tower::retry::RetrySafety;
use http::{HeaderValue, Method, StatusCode};
use serde_json::{Value, json};

use crate::client::GenesysClient;
use crate::error::GenesysError;

pub use crate::routes::DEFAULT_INGESTION_PATH;
/// The most records in one chunk by default.
pub const DEFAULT_MAX_RECORDS: usize = 500;
/// The most bytes in one chunk's body by default (Genesys `request.bytes.max`).
pub const DEFAULT_MAX_BYTES: usize = 512_000;
/// Chunks in flight at once by default.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// Seed 000's `InteractionRecord` as a JSON Schema: `external_id`, `timestamp`, `channel`,
/// `customer_segment` (strings) and `duration_seconds` (an integer), all required.
pub fn interaction_record_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "InteractionRecord",
        "type": "object",
        "required": ["external_id", "timestamp", "channel", "duration_seconds", "customer_segment"],
        "properties": {
            "external_id": {"type": "string", "minLength": 1},
            "timestamp": {"type": "string"},
            "channel": {"type": "string"},
            "duration_seconds": {"type": "integer", "minimum": 0},
            "customer_segment": {"type": "string"}
        }
    })
}

/// Configures an [`Ingestion`]; start with [`GenesysClient::ingestion`].
#[derive(Debug, Clone)]
#[must_use]
pub struct IngestionBuilder {
    client: GenesysClient,
    path: String,
    schema: Option<Value>,
    max_records: usize,
    max_bytes: usize,
    concurrency: usize,
    key_prefix: Option<String>,
    deduplicates: Option<bool>,
}

impl IngestionBuilder {
    /// The path to post chunks to (default [`DEFAULT_INGESTION_PATH`]). Unless you also say
    /// that it [deduplicates by key](Self::deduplicates_by_key), a chunk sent there is never
    /// sent again after an attempt that may have reached it.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Whether the target deduplicates requests by their `Idempotency-Key` (a repeated key
    /// answered from its store, never applied twice). Default: true for
    /// [`DEFAULT_INGESTION_PATH`] (the simulator's, as seed 000 describes it), false for a path
    /// of yours. When true, a chunk whose response was lost is sent again with its key; when
    /// false, it fails as [may have been applied](GenesysError::may_have_been_applied), for you
    /// to check before sending it again.
    pub fn deduplicates_by_key(mut self, deduplicates: bool) -> Self {
        self.deduplicates = Some(deduplicates);
        self
    }

    /// The JSON Schema every record must match (default: none, every JSON value is sent).
    pub fn schema(mut self, schema: Value) -> Self {
        self.schema = Some(schema);
        self
    }

    /// The most records per chunk (default 500).
    pub fn max_records(mut self, n: usize) -> Self {
        self.max_records = n.max(1);
        self
    }

    /// The most bytes per chunk body (default 512000).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// Chunks in flight at once (default 4; the client's concurrency limit and pacing apply too).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The prefix of every chunk's `Idempotency-Key` (default: a UUID drawn once per batch). Give
    /// the same prefix to a re-run of the same input to have the target skip the chunks it already
    /// applied (the target keeps keys for its own retention period).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    /// Builds the ingestion; fails when the schema is not a valid JSON Schema.
    pub fn build(self) -> Result<Ingestion, GenesysError> {
        let validator = match &self.schema {
            Some(schema) => Some(Arc::new(jsonschema::validator_for(schema).map_err(
                |e| {
                    GenesysError::Config(format!(
                        "the ingestion schema is not a valid JSON Schema: {e}"
                    ))
                },
            )?)),
            None => None,
        };
        if self.max_bytes < 3 {
            return Err(GenesysError::Config(
                "max_bytes must leave room for at least one record".into(),
            ));
        }
        let deduplicates = self
            .deduplicates
            .unwrap_or(self.path == DEFAULT_INGESTION_PATH);
        Ok(Ingestion {
            client: self.client,
            deduplicates,
            path: self.path,
            validator,
            max_records: self.max_records,
            max_bytes: self.max_bytes,
            concurrency: self.concurrency,
            key_prefix: self.key_prefix,
        })
    }
}

/// Validates, chunks and sends records. Cheap to clone.
#[derive(Clone)]
pub struct Ingestion {
    client: GenesysClient,
    path: String,
    validator: Option<Arc<jsonschema::Validator>>,
    max_records: usize,
    max_bytes: usize,
    concurrency: usize,
    key_prefix: Option<String>,
    /// Whether the target deduplicates by key: the chunks' [`RetrySafety`].
    deduplicates: bool,
}

impl fmt::Debug for Ingestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ingestion")
            .field("path", &self.path)
            .field("schema", &self.validator.is_some())
            .field("max_records", &self.max_records)
            .field("max_bytes", &self.max_bytes)
            .field("concurrency", &self.concurrency)
            .field("key_prefix", &self.key_prefix)
            .field("deduplicates", &self.deduplicates)
            .finish()
    }
}

/// A record that was not sent, and why.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InvalidRecord {
    /// Its index in the input.
    pub index: usize,
    /// Why it is invalid (one line per schema violation: `/path: message`).
    pub reasons: Vec<String>,
    /// The record as given.
    pub record: Value,
}

/// One chunk, ready to send.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Chunk {
    /// The chunk's number in its batch, from 0.
    pub index: usize,
    /// Its `Idempotency-Key`.
    pub key: String,
    /// The input indices of its records.
    pub records: Vec<usize>,
    /// The body: a JSON array of the records.
    pub body: Bytes,
}

/// A batch split into chunks, and the records left out.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Prepared {
    /// The chunks to send.
    pub chunks: Vec<Chunk>,
    /// The records that failed validation (or are too big for any chunk).
    pub invalid: Vec<InvalidRecord>,
}

/// A chunk the target accepted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChunkOutcome {
    /// The chunk's number.
    pub index: usize,
    /// Its `Idempotency-Key`.
    pub key: String,
    /// The input indices of its records.
    pub records: Vec<usize>,
    /// The status of the answer.
    pub status: StatusCode,
    /// Whether the answer was a replay of an earlier delivery of the same key.
    pub replayed: bool,
    /// Attempts it took.
    pub attempts: u32,
    /// The answer's body (JSON, or `null`).
    pub response: Value,
}

/// A chunk that was not delivered.
#[derive(Debug)]
#[non_exhaustive]
pub struct ChunkFailure {
    /// The chunk's number.
    pub index: usize,
    /// Its `Idempotency-Key`: send the chunk again with it, and a target that deduplicates by
    /// key applies it at most once. Check what any other target holds first when the error
    /// [may have been applied](GenesysError::may_have_been_applied).
    pub key: String,
    /// The input indices of its records.
    pub records: Vec<usize>,
    /// Why.
    pub error: GenesysError,
}

/// What an [`Ingestion::ingest`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct IngestReport {
    /// Records left out before sending.
    pub invalid: Vec<InvalidRecord>,
    /// Chunks accepted, in chunk order.
    pub delivered: Vec<ChunkOutcome>,
    /// Chunks not delivered, in chunk order.
    pub failed: Vec<ChunkFailure>,
}

impl IngestReport {
    /// Records in accepted chunks.
    pub fn records_delivered(&self) -> usize {
        self.delivered.iter().map(|c| c.records.len()).sum()
    }

    /// Records in chunks that failed.
    pub fn records_failed(&self) -> usize {
        self.failed.iter().map(|c| c.records.len()).sum()
    }

    /// Whether every chunk was delivered (invalid records aside: they were never sent).
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

impl GenesysClient {
    /// Starts configuring record ingestion (see the [`ingestion`](crate::ingestion) module).
    pub fn ingestion(&self) -> IngestionBuilder {
        IngestionBuilder {
            client: self.clone(),
            path: DEFAULT_INGESTION_PATH.to_owned(),
            schema: None,
            max_records: DEFAULT_MAX_RECORDS,
            max_bytes: DEFAULT_MAX_BYTES,
            concurrency: DEFAULT_CONCURRENCY,
            key_prefix: None,
            deduplicates: None,
        }
    }
}

impl Ingestion {
    /// Why `record` does not match the schema (empty when it does, or when there is no schema).
    pub fn check(&self, record: &Value) -> Vec<String> {
        match &self.validator {
            Some(v) => v
                .iter_errors(record)
                .map(|e| {
                    let path = e.instance_path().as_str().to_owned();
                    if path.is_empty() {
                        e.to_string()
                    } else {
                        format!("{path}: {e}")
                    }
                })
                .collect(),
            None => Vec::new(),
        }
    }

    /// Validates and chunks `records`; nothing is sent.
    pub fn prepare(&self, records: Vec<Value>) -> Prepared {
        let prefix = self
            .key_prefix
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut out = Prepared::default();
        let mut body = BytesMut::new();
        let mut members: Vec<usize> = Vec::new();
        let close = |body: &mut BytesMut, members: &mut Vec<usize>, out: &mut Prepared| {
            if members.is_empty() {
                return;
            }
            body.put_u8(b']');
            let index = out.chunks.len();
            out.chunks.push(Chunk {
                index,
                key: format!("{prefix}-{index}"),
                records: std::mem::take(members),
                body: std::mem::take(body).freeze(),
            });
        };
        for (index, record) in records.into_iter().enumerate() {
            let reasons = self.check(&record);
            if !reasons.is_empty() {
                out.invalid.push(InvalidRecord {
                    index,
                    reasons,
                    record,
                });
                continue;
            }
            let bytes = match serde_json::to_vec(&record) {
                Ok(b) => b,
                Err(e) => {
                    out.invalid.push(InvalidRecord {
                        index,
                        reasons: vec![format!("not serialisable as JSON: {e}")],
                        record,
                    });
                    continue;
                }
            };
            // `[` + record + `]` must fit on its own.
            if bytes.len() + 2 > self.max_bytes {
                out.invalid.push(InvalidRecord {
                    index,
                    reasons: vec![format!(
                        "the record is {} bytes, more than a request may carry ({} bytes)",
                        bytes.len(),
                        self.max_bytes
                    )],
                    record,
                });
                continue;
            }
            // Adding it costs a comma (or the opening bracket) and the closing bracket.
            if !members.is_empty()
                && (members.len() >= self.max_records
                    || body.len() + 1 + bytes.len() + 1 > self.max_bytes)
            {
                close(&mut body, &mut members, &mut out);
            }
            body.put_u8(if members.is_empty() { b'[' } else { b',' });
            body.put_slice(&bytes);
            members.push(index);
        }
        close(&mut body, &mut members, &mut out);
        out
    }

    /// Sends one chunk, with its key: safe to call again for the same chunk when the target
    /// [deduplicates by key](IngestionBuilder::deduplicates_by_key).
    pub async fn send(&self, chunk: &Chunk) -> Result<ChunkOutcome, GenesysError> {
        let mut request = self.client.request(
            Method::POST,
            &self.path,
            None,
            Some(match self.deduplicates {
                true => RetrySafety::KeyHonoured,
                false => RetrySafety::Unsafe,
            }),
        )?;
        *request.body_mut() = genesys_tower::Body::from(chunk.body.clone());
        if request.extensions().get::<Route>().is_none() {
            // A path of the caller's own, one per job: its own label.
            request
                .extensions_mut()
                .insert(Route::new(self.path.clone()));
        }
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            IDEMPOTENCY_KEY,
            HeaderValue::from_str(&chunk.key).map_err(|_| {
                GenesysError::Config(format!(
                    "the idempotency key {:?} is not a valid header value",
                    chunk.key
                ))
            })?,
        );
        let response = self.client.send(request).await?;
        let replayed = response.replayed();
        Ok(ChunkOutcome {
            index: chunk.index,
            key: chunk.key.clone(),
            records: chunk.records.clone(),
            status: response.status,
            replayed,
            attempts: response.attempts(),
            response: serde_json::from_slice(&response.body).unwrap_or(Value::Null),
        })
    }

    /// Validates, chunks and sends `records`, up to [`concurrency`](IngestionBuilder::concurrency)
    /// chunks at a time. Never fails as a whole: see the report for what was delivered, left out
    /// or failed.
    pub async fn ingest(&self, records: Vec<Value>) -> IngestReport {
        let prepared = self.prepare(records);
        let mut report = IngestReport {
            invalid: prepared.invalid,
            ..IngestReport::default()
        };
        let results: Vec<(Chunk, Result<ChunkOutcome, GenesysError>)> =
            stream::iter(prepared.chunks)
                .map(|chunk| async move {
                    let result = self.send(&chunk).await;
                    (chunk, result)
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
        for (chunk, result) in results {
            match result {
                Ok(outcome) => report.delivered.push(outcome),
                Err(error) => report.failed.push(ChunkFailure {
                    index: chunk.index,
                    key: chunk.key,
                    records: chunk.records,
                    error,
                }),
            }
        }
        report.delivered.sort_by_key(|c| c.index);
        report.failed.sort_by_key(|c| c.index);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingestion(max_records: usize, max_bytes: usize) -> Ingestion {
        let client = GenesysClient::builder()
            .base_url("http://127.0.0.1:9")
            .client_credentials("a", "b")
            .build()
            .unwrap();
        client
            .ingestion()
            .schema(interaction_record_schema())
            .max_records(max_records)
            .max_bytes(max_bytes)
            .key_prefix("batch")
            .build()
            .unwrap()
    }

    fn record(i: usize) -> Value {
        json!({"external_id": format!("R{i}"), "timestamp": "2024-01-01T00:00:00Z",
               "channel": "voice", "duration_seconds": i, "customer_segment": "smb"})
    }

    #[tokio::test]
    async fn invalid_records_are_left_out_with_reasons() {
        let ing = ingestion(500, 512_000);
        let mut records: Vec<Value> = (0..5).map(record).collect();
        records[1]["duration_seconds"] = json!("long");
        records[3].as_object_mut().unwrap().remove("channel");
        let p = ing.prepare(records);
        assert_eq!(
            p.invalid.iter().map(|r| r.index).collect::<Vec<_>>(),
            [1, 3]
        );
        assert!(
            p.invalid[0].reasons[0].contains("duration_seconds"),
            "{:?}",
            p.invalid[0]
        );
        assert!(
            p.invalid[1].reasons[0].contains("channel"),
            "{:?}",
            p.invalid[1]
        );
        assert_eq!(p.chunks.len(), 1);
        assert_eq!(p.chunks[0].records, [0, 2, 4]);
        let parsed: Vec<Value> = serde_json::from_slice(&p.chunks[0].body).unwrap();
        assert_eq!(parsed.len(), 3);
    }

    #[tokio::test]
    async fn chunks_respect_both_bounds_and_keys_are_stable() {
        let ing = ingestion(500, 512_000);
        let p = ing.prepare((0..1234).map(record).collect());
        assert_eq!(
            p.chunks.iter().map(|c| c.records.len()).collect::<Vec<_>>(),
            [500, 500, 234]
        );
        assert_eq!(p.chunks[2].key, "batch-2");

        let one = serde_json::to_vec(&record(10)).unwrap().len();
        let ing = ingestion(500, one * 3 + 4);
        let p = ing.prepare((10..20).map(record).collect());
        for c in &p.chunks {
            assert!(
                c.body.len() <= one * 3 + 4,
                "{} > {}",
                c.body.len(),
                one * 3 + 4
            );
            let parsed: Vec<Value> = serde_json::from_slice(&c.body).unwrap();
            assert_eq!(parsed.len(), c.records.len());
        }
        assert_eq!(p.chunks.iter().map(|c| c.records.len()).sum::<usize>(), 10);
        assert!(p.chunks.iter().all(|c| c.records.len() <= 3));
    }

    #[tokio::test]
    async fn a_record_too_big_for_any_chunk_is_invalid() {
        let ing = ingestion(500, 50);
        let p = ing.prepare(vec![record(1)]);
        assert!(p.chunks.is_empty());
        assert!(p.invalid[0].reasons[0].contains("bytes"));
    }
}
