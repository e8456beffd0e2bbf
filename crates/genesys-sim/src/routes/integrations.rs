//! Integration config: GET and PUT with the version.

use super::users::field_error;
use super::*;

fn integration_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("The integration {id} was not found"))
        .params(
            "The integration {integrationId} was not found",
            &[("integrationId", id)],
        )
        .entity(id)
}

/// `GET /api/v2/integrations/{integrationId}/config/current`.
pub(super) fn get_config(ctx: &Ctx<'_>, call: &Call<'_>) -> Handled {
    let id = call.param;
    let cfg = ctx
        .sh
        .integrations
        .get(id)
        .ok_or_else(|| integration_not_found(id))?;
    Ok(json_response(StatusCode::OK, &*lock(cfg)))
}

/// `PUT /api/v2/integrations/{integrationId}/config/current`.
pub(super) fn put_config(ctx: &Ctx<'_>, call: &Call<'_>) -> Handled {
    let (id, body) = (call.param, call.body);
    let put = parse_object(body)?;
    let unknown: Vec<&str> = put
        .keys()
        .map(String::as_str)
        .filter(|k| {
            !matches!(
                *k,
                "id" | "name"
                    | "version"
                    | "properties"
                    | "advanced"
                    | "notes"
                    | "credentials"
                    | "selfUri"
            )
        })
        .collect();
    if !unknown.is_empty() {
        let mut e = ApiError::bad_request(format!(
            "Unrecognized field(s) in the request body: {}",
            unknown.join(", ")
        ));
        for f in unknown {
            e = e.detail(Detail {
                error_code: "unrecognized.field".into(),
                field_name: Some(f.to_string()),
                ..Detail::default()
            });
        }
        return Err(e);
    }
    let version = match put.get("version") {
        None => {
            return Err(field_error(
                "version",
                "required.field.missing",
                "The version field is required: send the config's current version (from a GET)"
                    .into(),
            ));
        }
        Some(v) => v.as_u64().ok_or_else(|| {
            field_error(
                "version",
                "invalid.value",
                "The field version must be a positive integer".into(),
            )
        })?,
    };
    for (k, want_object) in [
        ("properties", true),
        ("advanced", true),
        ("credentials", true),
        ("name", false),
        ("notes", false),
    ] {
        if let Some(v) = put.get(k) {
            let ok = if want_object {
                v.is_object()
            } else {
                v.is_string()
            };
            if !ok {
                let kind = if want_object { "an object" } else { "a string" };
                return Err(field_error(
                    k,
                    "invalid.value",
                    format!("The field {k} must be {kind}"),
                ));
            }
        }
    }
    let cell = ctx
        .sh
        .integrations
        .get(id)
        .ok_or_else(|| integration_not_found(id))?;
    let mut cfg = lock(cell);
    let current = cfg.get("version").and_then(Value::as_u64).unwrap_or(1);
    if version != current {
        return Err(ApiError::new(
            409,
            "general.conflict",
            "The version supplied does not match the current version of the integration configuration",
        )
        .entity(id));
    }
    for (k, v) in put {
        if matches!(
            k.as_str(),
            "properties" | "advanced" | "credentials" | "name" | "notes"
        ) {
            cfg.insert(k, v);
        }
    }
    cfg.insert("version".into(), json!(current + 1));
    let resp = json_response(StatusCode::OK, &*cfg);
    drop(cfg);
    ctx.record(id.to_string(), body);
    Ok(resp)
}
