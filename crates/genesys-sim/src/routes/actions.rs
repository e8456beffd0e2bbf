//! Data actions: execute and test.

use super::*;

/// The most bytes of keys a flattened answer may hold: a deeply nested object with long keys
/// and many leaves would otherwise spell its whole path once per leaf, gigabytes from a body
/// under the body limit.
const FLAT_KEYS_MAX: usize = 4 * 1024 * 1024;

/// Architect's flattening: nested objects become dotted keys. `Err` when the keys would take
/// more than `budget` bytes in all.
fn flatten(
    prefix: &str,
    v: &Value,
    out: &mut Map<String, Value>,
    budget: &mut usize,
) -> Result<(), ()> {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let len = prefix.len() + 1 + k.len();
                *budget = budget.checked_sub(len).ok_or(())?;
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out, budget)?;
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
    Ok(())
}

/// `POST /api/v2/integrations/actions/{actionId}/execute`.
pub(super) fn execute(ctx: &Ctx<'_>, call: &Call<'_>) -> Handled {
    run(ctx, call, false)
}

/// `POST /api/v2/integrations/actions/{actionId}/test`.
pub(super) fn test(ctx: &Ctx<'_>, call: &Call<'_>) -> Handled {
    run(ctx, call, true)
}

fn run(ctx: &Ctx<'_>, call: &Call<'_>, test: bool) -> Handled {
    let (action_id, body, query) = (call.param, call.body, call.query);
    let action = ctx.sh.cfg.actions.get(action_id).ok_or_else(|| {
        ApiError::not_found(format!("The action {action_id} was not found"))
            .params(
                "The action {actionId} was not found",
                &[("actionId", action_id)],
            )
            .entity(action_id)
    })?;
    let input = Value::Object(parse_object(body)?);
    let result = action.run(&input);
    if result.is_ok() {
        // Data actions do not honour Idempotency-Key: every execution is an effect.
        ctx.record(action_id.to_string(), body);
    }
    if test {
        let (success, final_result, error) = match &result {
            Ok(v) => (true, v.clone(), Value::Null),
            Err(f) => (
                false,
                Value::Null,
                serde_json::to_value(nested_error(f.status, &f.code, f.message.clone()))
                    .map(|mut e| {
                        e["contextId"] = json!(ctx.cid);
                        e
                    })
                    .unwrap_or(Value::Null),
            ),
        };
        let body = json!({
            "operations": [
                {"step": 1, "name": "Validate input", "success": true, "result": input},
                {"step": 2, "name": format!("Execute {}", action.name()), "success": success, "result": final_result},
            ],
            "error": error,
            "finalResult": final_result,
            "success": success,
        });
        return Ok(json_response(StatusCode::OK, &body));
    }
    match result {
        Ok(out) => {
            let out = if query_param(query, "flatten") == Some("true") {
                let mut flat = Map::new();
                let mut budget = FLAT_KEYS_MAX;
                if flatten("", &out, &mut flat, &mut budget).is_err() {
                    return Err(ApiError::new(
                        400,
                        "bad.request",
                        format!(
                            "The flattened output would hold more than [{FLAT_KEYS_MAX}] bytes \
                             of keys; call the action without flatten=true"
                        ),
                    ));
                }
                Value::Object(flat)
            } else {
                out
            };
            Ok(json_response(StatusCode::OK, &out))
        }
        // A failing action answers the data-action error shape, not the platform's ErrorBody.
        Err(f) => Ok(json_response(
            StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_REQUEST),
            &json!({
                "errorCode": f.code,
                "status": f.status,
                "correlationId": ctx.cid,
                "entityName": action.name(),
                "userMessage": f.message,
                "userParams": [],
                "details": [{"errorCode": f.code}],
                "errors": [],
            }),
        )),
    }
}
