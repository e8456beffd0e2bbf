//! Users: list, get, and PATCH with the version.

use super::*;

fn page_param(
    query: Option<&str>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match query_param(query, name) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "{name} must be an integer between 1 and {max}, got `{v}`"
            ))
            .detail(Detail {
                error_code: "invalid.value".into(),
                field_name: Some(name.to_string()),
                ..Detail::default()
            })),
        },
    }
}

/// `GET /api/v2/users`.
pub(super) fn list_users(ctx: &Ctx<'_>, call: &Call<'_>) -> Handled {
    let query = call.query;
    let page_size = page_param(query, "pageSize", 25, 500)?;
    let page_number = page_param(query, "pageNumber", 1, usize::MAX)?;
    let users = &ctx.sh.users.list;
    let total = users.len();
    let page_count = total.div_ceil(page_size);
    let start = (page_number - 1).saturating_mul(page_size).min(total);
    let end = start.saturating_add(page_size).min(total);
    let entities: Vec<Value> = users[start..end]
        .iter()
        .map(|u| serde_json::to_value(&*lock(u)).unwrap_or(Value::Null))
        .collect();
    let uri = |n: usize| format!("/api/v2/users?pageSize={page_size}&pageNumber={n}");
    let mut body = json!({
        "entities": entities,
        "pageSize": page_size,
        "pageNumber": page_number,
        "total": total,
        "pageCount": page_count,
        "firstUri": uri(1),
        "selfUri": uri(page_number),
        "lastUri": uri(page_count.max(1)),
    });
    if page_number < page_count {
        body["nextUri"] = json!(uri(page_number + 1));
    }
    if page_number > 1 {
        body["previousUri"] = json!(uri(page_number - 1));
    }
    Ok(json_response(StatusCode::OK, &body))
}

fn user_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("The user {id} was not found"))
        .params("The user {userId} was not found", &[("userId", id)])
        .entity(id)
}

/// `GET /api/v2/users/{userId}`.
pub(super) fn get_user(ctx: &Ctx<'_>, call: &Call<'_>) -> Handled {
    let id = call.param;
    let user = ctx.sh.users.get(id).ok_or_else(|| user_not_found(id))?;
    Ok(json_response(StatusCode::OK, &*lock(user)))
}

const USER_VERSION_MISMATCH: &str =
    "The version supplied does not match the current version of the user";

pub(super) fn field_error(field: &str, code: &str, message: String) -> ApiError {
    ApiError::bad_request(message).detail(Detail {
        error_code: code.to_string(),
        field_name: Some(field.to_string()),
        ..Detail::default()
    })
}

fn want_string(field: &str, v: &Value) -> Result<String, ApiError> {
    v.as_str().map(str::to_string).ok_or_else(|| {
        field_error(
            field,
            "invalid.value",
            format!("The field {field} must be a string"),
        )
    })
}

/// `PATCH /api/v2/users/{userId}`.
pub(super) fn patch_user(ctx: &Ctx<'_>, call: &Call<'_>) -> Handled {
    let (id, body) = (call.param, call.body);
    let patch = parse_object(body)?;
    // Validate everything before touching the user: a 400 applies nothing.
    let mut unknown: Vec<&str> = Vec::new();
    let mut version = None;
    for (k, v) in &patch {
        match k.as_str() {
            "version" => {
                version = Some(v.as_u64().ok_or_else(|| {
                    field_error(
                        "version",
                        "invalid.value",
                        "The field version must be a positive integer".into(),
                    )
                })?)
            }
            "name" | "email" | "title" | "department" | "username" | "preferredName" => {
                let s = want_string(k, v)?;
                if (k == "email" || k == "username") && !s.contains('@') {
                    return Err(field_error(
                        k,
                        "invalid.value",
                        format!("The field {k} must be an email address, got `{s}`"),
                    ));
                }
            }
            "state" => {
                let s = want_string(k, v)?;
                if !matches!(s.as_str(), "active" | "inactive") {
                    return Err(field_error(
                        k,
                        "invalid.value",
                        format!("The field state must be `active` or `inactive`, got `{s}`"),
                    ));
                }
            }
            "acdAutoAnswer" => {
                if !v.is_boolean() {
                    return Err(field_error(
                        k,
                        "invalid.value",
                        "The field acdAutoAnswer must be a boolean".into(),
                    ));
                }
            }
            "id" => {
                if v.as_str() != Some(id) {
                    return Err(field_error(
                        "id",
                        "invalid.value",
                        "The id in the body does not match the id in the path".into(),
                    ));
                }
            }
            "selfUri" => {}
            other => unknown.push(other),
        }
    }
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
    let Some(version) = version else {
        return Err(field_error(
            "version",
            "required.field.missing",
            "The version field is required: send the user's current version (from a GET)".into(),
        ));
    };
    let cell = ctx.sh.users.get(id).ok_or_else(|| user_not_found(id))?;
    let mut user = lock(cell);
    if version != user.version {
        // The real API also answers it as a 400 with the same message.
        let (status, code) = if ctx.variant {
            (400, "bad.request")
        } else {
            (409, "general.conflict")
        };
        return Err(ApiError::new(status, code, USER_VERSION_MISMATCH).entity(id));
    }
    for (k, v) in &patch {
        let s = || v.as_str().unwrap_or_default().to_string();
        match k.as_str() {
            "name" => user.name = s(),
            "email" => user.email = s(),
            "title" => user.title = s(),
            "department" => user.department = s(),
            "username" => user.username = s(),
            "preferredName" => user.preferred_name = Some(s()),
            "state" => user.state = s(),
            "acdAutoAnswer" => user.acd_auto_answer = v.as_bool().unwrap_or(false),
            _ => {}
        }
    }
    user.version += 1;
    let resp = json_response(StatusCode::OK, &*user);
    drop(user);
    ctx.record(id.to_string(), body);
    Ok(resp)
}
