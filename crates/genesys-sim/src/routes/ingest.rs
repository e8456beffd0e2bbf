//! Seed 000's ingestion endpoint: JSON Schema validation, honours `Idempotency-Key` (unless
//! configured as a real bulk endpoint, which ignores it).

use super::*;

fn record_name(key_field: &str, i: usize, record: &Value) -> String {
    match record.get(key_field) {
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Number(_)) => v.to_string(),
        _ => format!("records[{i}]"),
    }
}

/// `POST` on the configured ingestion path.
pub(super) fn ingest(ctx: &Ctx<'_>, call: &Call<'_>) -> Handled {
    let body = call.body;
    let sh = ctx.sh;
    let parsed: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("The request body could not be parsed as JSON: {e}"))
    })?;
    let records = match &parsed {
        Value::Array(a) => a,
        Value::Object(m) => match m.get("records") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(ApiError::bad_request(
                    "The body must be a JSON array of records or an object with a `records` array",
                ));
            }
        },
        _ => {
            return Err(ApiError::bad_request(
                "The body must be a JSON array of records or an object with a `records` array",
            ));
        }
    };
    let max = sh.cfg.max_records;
    if records.len() > max {
        return Err(ApiError::new(
            413,
            "request.entity.too.large",
            format!(
                "A batch holds at most [{max}] records; this one has [{}]",
                records.len()
            ),
        )
        .params(
            "A batch holds at most [{max}] records; this one has [{count}]",
            &[
                ("max", &max.to_string()),
                ("count", &records.len().to_string()),
            ],
        )
        .limit("ingestion.records.max", "data.exchange", max as u64));
    }

    // A real bulk endpoint ignores the header: every request is applied.
    let key = match sh.cfg.ingestion_deduplicates {
        true => ctx.idempotency_key().map(str::to_string),
        false => None,
    };
    let hash = fnv1a(body);
    let replay = |stored: &Stored| -> Handled {
        if stored.payload_hash != hash {
            return Err(ApiError::new(
                422,
                "idempotency.key.reused",
                "This Idempotency-Key was already used with a different request body",
            ));
        }
        let mut resp = json_bytes(
            StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK),
            stored.body.clone(),
        );
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok(resp)
    };
    if let Some(k) = &key
        && let Some(stored) = lock(&sh.idempotency).get(&(ctx.client.clone(), k.clone()))
    {
        return replay(stored);
    }

    let mut err = ApiError::new(
        422,
        "unprocessable.entity",
        "One or more records do not match the ingestion schema",
    );
    let mut invalid = 0usize;
    for (i, record) in records.iter().enumerate() {
        let name = record_name(&sh.cfg.ingestion_record_key, i, record);
        let mut bad = false;
        for e in sh.schema.iter_errors(record).take(20) {
            bad = true;
            let field = match e.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    property.as_str().unwrap_or_default().to_string()
                }
                _ => e
                    .instance_path()
                    .as_str()
                    .trim_start_matches('/')
                    .replace('/', "."),
            };
            let field_name = if field.is_empty() {
                format!("records[{i}]")
            } else {
                format!("records[{i}].{field}")
            };
            let message = format!("{field_name}: {e}");
            err = err
                .detail(Detail {
                    error_code: format!("schema.{}", e.kind().keyword()),
                    field_name: Some(field_name),
                    entity_id: Some(name.clone()),
                    entity_name: Some(format!("records[{i}]")),
                })
                .nested(nested_error(422, "schema.validation.failed", message));
        }
        invalid += usize::from(bad);
    }
    if invalid > 0 {
        return Err(err.params(
            "{invalid} of {count} records do not match the ingestion schema",
            &[
                ("invalid", &invalid.to_string()),
                ("count", &records.len().to_string()),
            ],
        ));
    }

    let resp_body = Bytes::from(
        serde_json::to_vec(&json!({
            "id": correlation_id(),
            "status": "accepted",
            "recordCount": records.len(),
        }))
        .unwrap_or_default(),
    );
    // Check, store and apply under one lock, so a concurrent repeat either applies nothing and
    // replays, or sees the key stored only once the records are in the ledger.
    let mut store = key.as_ref().map(|_| lock(&sh.idempotency));
    if let (Some(k), Some(store)) = (&key, store.as_mut()) {
        let slot = (ctx.client.clone(), k.clone());
        if let Some(stored) = store.get(&slot) {
            return replay(stored);
        }
        store.insert(
            slot,
            Stored {
                payload_hash: hash,
                status: 200,
                body: resp_body.clone(),
            },
            sh.cfg.ledger_limit,
        );
    }
    for (i, record) in records.iter().enumerate() {
        let payload = serde_json::to_vec(record).unwrap_or_default();
        ctx.record(
            record_name(&sh.cfg.ingestion_record_key, i, record),
            &payload,
        );
    }
    drop(store);
    Ok(json_bytes(StatusCode::OK, resp_body))
}
