//! Organization limits, as the API's `LimitsEntityListing`.

use super::*;

/// `GET /api/v2/organizations/limits/namespaces/{namespace}`.
pub(super) fn limits(ctx: &Ctx<'_>, call: &Call<'_>) -> Handled {
    let namespace = call.param;
    let cfg = &ctx.sh.cfg;
    let limits = match namespace {
        NS_PLATFORM => {
            let mut v = vec![json!({"key": "request.bytes.max", "value": cfg.max_body_bytes})];
            if let Some((n, w)) = cfg.rate_limit {
                // The key names a rate per minute, as in the real API: a quota over another
                // window is scaled to it (rounded down). Nothing says the window itself.
                v.push(json!({
                    "key": "client.credentials.token.rate.per.minute",
                    "value": per_minute(n, w),
                }));
            }
            v
        }
        "data.exchange" => vec![
            json!({"key": "ingestion.records.max", "value": cfg.max_records}),
            json!({"key": "ingestion.bytes.max", "value": cfg.max_body_bytes}),
        ],
        _ => {
            return Err(ApiError::not_found(format!(
                "The limits namespace {namespace} was not found (the simulator knows platform.api and data.exchange)"
            ))
            .params("The limits namespace {namespace} was not found", &[("namespace", namespace)]));
        }
    };
    // The API's `LimitsEntityListing`: each limit names its namespace; one page holds all.
    let total = limits.len();
    let entities: Vec<Value> = limits
        .into_iter()
        .map(|mut l| {
            l["namespace"] = json!(namespace);
            l
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "entities": entities,
            "pageSize": total.max(1),
            "pageNumber": 1,
            "total": total,
            "pageCount": 1,
        }),
    ))
}
