//! Users: get, list (a paged stream), and update with the version the API requires.
//!
//! `PATCH /api/v2/users/{id}` needs the user's current `version`; a stale one is answered 409
//! `general.conflict` (sometimes 400 with the same message). [`GenesysClient::update_user`] does
//! what the real API needs: GET the version, PATCH with it, and on a conflict read again and
//! re-apply, a bounded number of times.
//!
//! A PATCH that carries the version is a conditional write: if an attempt was applied and its
//! answer lost, a replay gets a conflict instead of applying twice. So the PATCH is marked
//! [`RetrySafety::Idempotent`] and the retry layer may send it again after an ambiguous failure;
//! the conflict that follows is resolved by reading the user: already in the requested state
//! means done.

use std::time::Duration;

use futures_util::stream::{self, Stream, TryStreamExt};
use genesys_tower::retry::RetrySafety;
use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client::{GenesysClient, segment};
use crate::error::GenesysError;

/// A Genesys Cloud user (the fields this crate reads; the rest are in [`other`](User::other)).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct User {
    /// The user's id.
    pub id: String,
    /// The user's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user's email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// `active`, `inactive` or `deleted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The version, required by PATCH.
    #[serde(default)]
    pub version: u64,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One page of `GET /api/v2/users`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct UsersPage {
    /// The users of this page.
    pub entities: Vec<User>,
    /// The page size.
    pub page_size: u64,
    /// The page number, from 1.
    pub page_number: u64,
    /// Users in all.
    pub total: Option<u64>,
    /// Pages in all.
    pub page_count: Option<u64>,
}

/// How [`GenesysClient::update_user_with`] resolves version conflicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpdateUserOptions {
    /// PATCH attempts in all (each after a fresh read), at least 1. Default 5.
    pub max_attempts: u32,
    /// A pause before re-reading after a conflict, doubled each time (default 0: re-read at once).
    pub conflict_backoff: Duration,
    /// The user's version, when the caller has just read the user: the first PATCH is sent with
    /// it instead of reading the user again (default: read first).
    pub known_version: Option<u64>,
}

impl Default for UpdateUserOptions {
    fn default() -> Self {
        UpdateUserOptions {
            max_attempts: 5,
            conflict_backoff: Duration::ZERO,
            known_version: None,
        }
    }
}

impl UpdateUserOptions {
    /// PATCH attempts in all.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The pause before re-reading after a conflict.
    pub fn conflict_backoff(mut self, d: Duration) -> Self {
        self.conflict_backoff = d;
        self
    }

    /// Sends the first PATCH with `version` (from a read the caller has just made) instead of
    /// reading the user first. A stale one is a conflict, resolved as usual.
    pub fn known_version(mut self, version: u64) -> Self {
        self.known_version = Some(version);
        self
    }
}

impl User {
    /// Whether the user already holds every field of `fields` (objects compared key by key,
    /// recursively): what [`GenesysClient::update_user`] checks after a conflict, and what a
    /// resumed job checks before sending a PATCH whose earlier outcome is unknown.
    pub fn holds(&self, fields: &Map<String, Value>) -> bool {
        let Ok(Value::Object(actual)) = serde_json::to_value(self) else {
            return false;
        };
        fields
            .iter()
            .all(|(k, wanted)| actual.get(k).is_some_and(|a| contains(a, wanted)))
    }
}

/// Whether `actual` holds everything `wanted` asks for (objects compared key by key, recursively;
/// anything else by equality).
fn contains(actual: &Value, wanted: &Value) -> bool {
    match (actual, wanted) {
        (Value::Object(a), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| a.get(k).is_some_and(|av| contains(av, wv))),
        _ => actual == wanted,
    }
}

/// The most users [`GenesysClient::list_user_pages`] lists (ten million, far more than any
/// org holds): past it the listing ends with an error rather than grow without end.
pub const MAX_LISTED_USERS: u64 = 10_000_000;

/// The largest page the users endpoint gives.
const MAX_PAGE_SIZE: u64 = 500;

/// Where a listing of users is: the page to ask for next, the users listed so far, and the
/// first user of the last page (to tell a page repeated from the next one).
struct Paging {
    number: u64,
    /// The page size asked for: the caller's, or the one the server answered the first page
    /// with (a server may cap it).
    size: u64,
    listed: u64,
    first_of_last: Option<String>,
}

impl Paging {
    /// After `page`, the answer to page `self.number`: where the listing goes next (`None`: it
    /// is over), or why the answer cannot be the page asked for.
    fn after(self, page: &UsersPage) -> Result<Option<Paging>, GenesysError> {
        let number = self.number;
        let refused = |what: String| GenesysError::Decode {
            status: http::StatusCode::OK,
            message: format!("page {number} of the users: {what}; the listing stops here"),
            correlation_id: None,
        };
        // What a cache or proxy in front of the API that ignores the query answers.
        let not_the_page = |what: &str| {
            refused(format!(
                "{what} (a cache or proxy that ignores the query would answer so)"
            ))
        };
        // `pageNumber` is 0 when the answer has none.
        if page.page_number != 0 && page.page_number != number {
            return Err(not_the_page(&format!(
                "the answer is page {}",
                page.page_number
            )));
        }
        // The first page's size is the listing's (a server may cap the size asked for); a later
        // page of another size would skip users, or list some twice.
        let page_size = match page.page_size {
            0 => self.size,
            size if size == self.size => size,
            size if number == 1 && (1..=MAX_PAGE_SIZE).contains(&size) => size,
            size => {
                return Err(not_the_page(&format!(
                    "the answer's pages hold {size} users, not the {} of the pages before",
                    self.size
                )));
            }
        };
        let first = page.entities.first().map(|user| user.id.clone());
        if first.is_some() && first == self.first_of_last {
            return Err(not_the_page(
                "the answer starts with the same user as the page before",
            ));
        }
        let listed = self.listed.saturating_add(page.entities.len() as u64);
        let last = match (page.page_count, page.total) {
            (Some(count), _) => number >= count,
            (None, Some(total)) => listed >= total,
            (None, None) => (page.entities.len() as u64) < page_size,
        } || page.entities.is_empty();
        if last {
            return Ok(None);
        }
        if listed >= MAX_LISTED_USERS {
            return Err(refused(format!(
                "{listed} users are listed, and the answers say more are to come: at most \
                 {MAX_LISTED_USERS} are listed"
            )));
        }
        Ok(Some(Paging {
            number: number.saturating_add(1),
            size: page_size,
            listed,
            first_of_last: first,
        }))
    }
}

impl GenesysClient {
    /// `GET /api/v2/users/{id}`.
    pub async fn get_user(&self, id: &str) -> Result<User, GenesysError> {
        let path = format!("/api/v2/users/{}", segment(id));
        self.json(Method::GET, &path, None, None).await
    }

    async fn get_user_raw(&self, id: &str) -> Result<Value, GenesysError> {
        let path = format!("/api/v2/users/{}", segment(id));
        self.json(Method::GET, &path, None, None).await
    }

    /// One page of `GET /api/v2/users?pageSize=&pageNumber=` (pages count from 1).
    pub async fn list_users_page(
        &self,
        page_size: u64,
        page_number: u64,
    ) -> Result<UsersPage, GenesysError> {
        let path = format!(
            "/api/v2/users?pageSize={}&pageNumber={}",
            page_size.max(1),
            page_number.max(1)
        );
        self.json(Method::GET, &path, None, None).await
    }

    /// Every page of `GET /api/v2/users`, fetched one after another as the stream is polled.
    ///
    /// Ends after the last page (by `pageCount`, by `total`, or at the first short or empty
    /// page). The pages are of the size the server answers the first one with (it may cap the
    /// size asked for). An error ends the stream after it is yielded, and so does an answer that
    /// is not the page asked for: one numbered otherwise, of another size than the first, or one
    /// that repeats the page before it (a cache or proxy that ignores the query would otherwise repeat a page
    /// for ever, or list its users over and over), and a listing past [`MAX_LISTED_USERS`]
    /// users.
    pub fn list_user_pages(
        &self,
        page_size: u64,
    ) -> impl Stream<Item = Result<UsersPage, GenesysError>> + Send + 'static {
        let client = self.clone();
        let start = Paging {
            number: 1,
            size: page_size.clamp(1, MAX_PAGE_SIZE),
            listed: 0,
            first_of_last: None,
        };
        stream::try_unfold(Some(start), move |paging| {
            let client = client.clone();
            async move {
                let Some(paging) = paging else {
                    return Ok(None);
                };
                let page = client.list_users_page(paging.size, paging.number).await?;
                let next = paging.after(&page)?;
                Ok(Some((page, next)))
            }
        })
    }

    /// Every user, page after page, as a stream.
    ///
    /// ```no_run
    /// use futures_util::TryStreamExt;
    /// # async fn run(client: genesys_client::GenesysClient) -> Result<(), genesys_client::GenesysError> {
    /// let users: Vec<_> = client.list_users(100).try_collect().await?;
    /// # Ok(()) }
    /// ```
    pub fn list_users(
        &self,
        page_size: u64,
    ) -> impl Stream<Item = Result<User, GenesysError>> + Send + 'static {
        self.list_user_pages(page_size)
            .map_ok(|page| stream::iter(page.entities.into_iter().map(Ok)))
            .try_flatten()
    }

    /// Updates a user: `fields` are the fields to change (`{"name": "Ada"}`).
    ///
    /// GETs the user's version, PATCHes `fields` with it, and on a version conflict reads again
    /// and re-applies, up to 5 PATCHes ([`update_user_with`](Self::update_user_with) to change
    /// that). A conflict after which the user already holds every requested field counts as done:
    /// that is what a PATCH whose answer was lost, then replayed, looks like. A `version` in
    /// `fields` is ignored: the current one is always sent.
    ///
    /// `fields` is anything that serializes to a JSON object: a `serde_json::Map`, `json!({..})`,
    /// or a struct of your own.
    pub async fn update_user(
        &self,
        id: &str,
        fields: impl Serialize,
    ) -> Result<User, GenesysError> {
        self.update_user_with(id, fields, UpdateUserOptions::default())
            .await
    }

    /// [`update_user`](Self::update_user) with options.
    pub async fn update_user_with(
        &self,
        id: &str,
        fields: impl Serialize,
        options: UpdateUserOptions,
    ) -> Result<User, GenesysError> {
        let mut fields = match serde_json::to_value(fields) {
            Ok(Value::Object(fields)) => fields,
            Ok(other) => {
                return Err(GenesysError::Config(format!(
                    "update_user: the fields must serialize to a JSON object, not {}",
                    match other {
                        Value::Array(_) => "an array",
                        Value::String(_) => "a string",
                        Value::Number(_) => "a number",
                        Value::Bool(_) => "a boolean",
                        _ => "null",
                    }
                )));
            }
            Err(e) => {
                return Err(GenesysError::Config(format!(
                    "update_user: the fields cannot be serialized: {e}"
                )));
            }
        };
        fields.remove("version");
        let wanted = Value::Object(fields.clone());
        let path = format!("/api/v2/users/{}", segment(id));
        let mut current = match options.known_version {
            Some(version) => serde_json::json!({ "version": version }),
            None => self.get_user_raw(id).await?,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let version = current
                .get("version")
                .and_then(Value::as_u64)
                .ok_or_else(|| GenesysError::Decode {
                    status: http::StatusCode::OK,
                    message: format!("user {id} has no numeric version"),
                    correlation_id: None,
                })?;
            let mut body = fields.clone();
            body.insert("version".into(), Value::from(version));
            let result: Result<User, GenesysError> = self
                .json(
                    Method::PATCH,
                    &path,
                    Some(&Value::Object(body)),
                    Some(RetrySafety::Idempotent),
                )
                .await;
            match result {
                Ok(user) => return Ok(user),
                Err(GenesysError::Api(e)) if e.is_version_conflict() => {
                    current = self.get_user_raw(id).await?;
                    if contains(&current, &wanted) {
                        tracing::debug!(
                            user = id,
                            attempt,
                            "conflict, and the user is already as requested"
                        );
                        return serde_json::from_value(current).map_err(|e| GenesysError::Decode {
                            status: http::StatusCode::OK,
                            message: e.to_string(),
                            correlation_id: None,
                        });
                    }
                    if attempt >= options.max_attempts.max(1) {
                        return Err(GenesysError::Api(e));
                    }
                    tracing::debug!(
                        user = id,
                        attempt,
                        "version conflict; re-applying on the new version"
                    );
                    if !options.conflict_backoff.is_zero() {
                        let pause = options
                            .conflict_backoff
                            .saturating_mul(1 << (attempt - 1).min(10));
                        tokio::time::sleep(pause).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containment_is_recursive_on_objects_only() {
        let actual = json!({"name":"Ada","addresses":{"city":"Paris","zip":"75"},"tags":["a","b"]});
        assert!(contains(&actual, &json!({"name":"Ada"})));
        assert!(contains(&actual, &json!({"addresses":{"city":"Paris"}})));
        assert!(!contains(&actual, &json!({"tags":["a"]})));
        assert!(!contains(&actual, &json!({"name":"Bob"})));
        assert!(!contains(&actual, &json!({"missing":null})));
    }

    #[test]
    fn a_user_holds_the_fields_it_has() {
        let u: User =
            serde_json::from_value(json!({"id":"1","version":3,"name":"Ada","title":"Lead"}))
                .unwrap();
        let fields = |v: Value| v.as_object().unwrap().clone();
        assert!(u.holds(&fields(json!({"title":"Lead","name":"Ada"}))));
        assert!(!u.holds(&fields(json!({"title":"Boss"}))));
        assert!(!u.holds(&fields(json!({"department":"x"}))));
    }

    /// A server that caps the page size: the listing goes on at its size; a later page of
    /// another size, or numbered otherwise, ends it.
    #[test]
    fn the_first_pages_size_is_the_listings() {
        let page = |number: u64, size: u64, ids: &[&str]| UsersPage {
            entities: ids
                .iter()
                .map(|id| serde_json::from_value(json!({"id": id})).unwrap())
                .collect(),
            page_size: size,
            page_number: number,
            total: Some(4),
            page_count: Some(2),
        };
        let start = Paging {
            number: 1,
            size: 100,
            listed: 0,
            first_of_last: None,
        };
        let next = start.after(&page(1, 2, &["a", "b"])).unwrap().unwrap();
        assert_eq!((next.number, next.size), (2, 2));
        assert!(next.after(&page(2, 2, &["c", "d"])).unwrap().is_none());
        let next = Paging {
            number: 2,
            size: 2,
            listed: 2,
            first_of_last: Some("a".into()),
        };
        assert!(next.after(&page(2, 3, &["c", "d", "e"])).is_err());
    }

    #[test]
    fn user_keeps_unknown_fields() {
        let u: User = serde_json::from_value(json!({"id":"1","version":3,"title":"x"})).unwrap();
        assert_eq!(u.version, 3);
        assert_eq!(u.other["title"], "x");
    }
}
