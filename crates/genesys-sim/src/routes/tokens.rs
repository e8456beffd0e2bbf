//! What a token is, as the API's `TokenInfo`.

use super::*;

/// `GET /api/v2/tokens/me`: the organization the token acts in, and the OAuth client it was
/// issued to.
pub(super) fn me(ctx: &Ctx<'_>, _call: &Call<'_>) -> Handled {
    let id = &ctx.sh.cfg.org_id;
    let organization = json!({
        "id": id,
        "name": "Simulated organization",
        "selfUri": format!("/api/v2/organizations/{id}"),
    });
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "organization": organization,
            "homeOrganization": organization,
            "authorizedScope": [],
            "OAuthClient": {
                "id": &**ctx.client,
                "name": &**ctx.client,
                "organization": organization,
            },
        }),
    ))
}
