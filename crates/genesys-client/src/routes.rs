//! The path templates of the endpoints this crate calls, and the template a path was made from.

/// The default ingestion path (seed 000's endpoint; not in the public API).
pub const DEFAULT_INGESTION_PATH: &str = "/api/v2/dataexchange/ingestion";

/// The path templates of the endpoints this crate calls: the `route` label of the stack's metrics
/// and the `url.template` of its spans, named as in the API's reference (and the simulator's
/// route table, so that the client's and the server's series line up).
const ROUTES: &[&str] = &[
    "/api/v2/users",
    "/api/v2/users/{userId}",
    "/api/v2/integrations/actions/{actionId}/execute",
    "/api/v2/integrations/actions/{actionId}/test",
    "/api/v2/integrations/{integrationId}/config/current",
    "/api/v2/organizations/limits/namespaces/{namespace}",
    "/api/v2/tokens/me",
    DEFAULT_INGESTION_PATH,
];

/// The template a path was made from (`/api/v2/users/42` is `/api/v2/users/{userId}`), if it is
/// one of [`ROUTES`].
pub(crate) fn route_template(path: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .copied()
        .find(|template| matches(path, template))
}

/// Whether `path` (its query, if any, ignored) was made from `template`: the same segments, a
/// `{name}` standing for any one that is not empty.
pub(crate) fn matches(path: &str, template: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let mut segments = path.split('/');
    let mut wanted = template.split('/');
    loop {
        match (segments.next(), wanted.next()) {
            (None, None) => return true,
            (Some(s), Some(w)) if w.starts_with('{') && !s.is_empty() => {}
            (Some(s), Some(w)) if s == w => {}
            _ => return false,
        }
    }
}

/// Whether a template from configuration is one [`matches`] can use: an absolute path of
/// non-empty segments, each a literal or a whole `{name}`, no query.
pub(crate) fn check_template(template: &str) -> Result<(), &'static str> {
    if !template.starts_with('/') {
        return Err("does not start with /");
    }
    if template.len() > 512 {
        return Err("is longer than 512 characters");
    }
    if template.contains(['?', '#', '*']) || template.chars().any(char::is_whitespace) {
        return Err("may hold no query, fragment, wildcard or space: name one segment {like_this}");
    }
    for segment in template.split('/').skip(1) {
        if segment.is_empty() {
            return Err("has an empty segment (a // or a trailing /)");
        }
        let opens = segment.matches('{').count();
        let closes = segment.matches('}').count();
        let whole = segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}');
        if (opens, closes) != (0, 0) && !(whole && opens == 1 && closes == 1) {
            return Err("has a { } that is not a whole, named segment, as in /users/{userId}");
        }
    }
    Ok(())
}
