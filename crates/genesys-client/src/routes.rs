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
    DEFAULT_INGESTION_PATH,
];

/// The template a path was made from (`/api/v2/users/42` is `/api/v2/users/{userId}`), if it is
/// one of [`ROUTES`].
pub(crate) fn route_template(path: &str) -> Option<&'static str> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    ROUTES.iter().copied().find(|template| {
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
    })
}
