//! Turning an error of the tower stack into a [`GenesysError`], and the retry classification
//! of the default stack.

use std::error::Error as StdError;

use genesys_tower::BoxError;
use genesys_tower::auth;
use genesys_tower::error::find;
use genesys_tower::retry::{
    self, Classification, Classify, DefaultClassifier, ErrorKind, RetrySafety,
};
use http::{HeaderMap, StatusCode, request};

/// The retry classification of the default stack: [`DefaultClassifier`], except that a failure
/// of the token source is final, and that 500, 502, 504 and the other 5xx that may come after
/// the work was done (all but 501, 503, 505 and 511) are ambiguous for requests marked
/// [`RetrySafety::Unsafe`] (data actions), which are then never replayed after them.
///
/// The token source retries the login host itself (429, 5xx, connection failures) and never
/// retries refused credentials; retrying the API request on top would only repeat a refusal
/// (or multiply the login host's retries). Use it in your own policy with
/// [`RetryPolicyBuilder::classifier`](genesys_tower::retry::RetryPolicyBuilder::classifier), or
/// start from [`GenesysClient::retry_policy_builder`](crate::GenesysClient::retry_policy_builder).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenesysClassifier {
    inner: DefaultClassifier,
}

impl GenesysClassifier {
    /// The default classification.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps a configured [`DefaultClassifier`] (to retry 500s, say).
    pub fn with(inner: DefaultClassifier) -> Self {
        GenesysClassifier { inner }
    }
}

impl Classify for GenesysClassifier {
    fn classify_response(
        &self,
        request: &request::Parts,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Classification {
        // A gateway error can hide an upstream that did the work. For a request that must never
        // run twice (a data action), it is ambiguous: the retry layer then replays it only if it
        // is safe to, which such a request is not, and the caller learns the outcome is unknown.
        let unsafe_request = request.extensions.get::<RetrySafety>() == Some(&RetrySafety::Unsafe);
        if unsafe_request && is_gateway_error(status) {
            return Classification::Ambiguous;
        }
        self.inner.classify_response(request, status, headers)
    }

    fn classify_error(
        &self,
        request: &request::Parts,
        error: &(dyn StdError + 'static),
    ) -> Classification {
        if find::<auth::Error>(error).is_some_and(auth::Error::is_token_source)
            || find::<TokenError>(error).is_some()
            // A proxy that refused the tunnel would refuse it again (and may lock the account
            // whose password it was given after a few tries).
            || crate::proxy::refused_in(error)
        {
            return Classification::Final;
        }
        self.inner.classify_error(request, error)
    }
}

use crate::error::{GenesysError, OAuthError, is_gateway_error};
use crate::oauth::TokenError;

impl GenesysError {
    /// Classifies an error that came out of the tower stack (a [`BoxError`]).
    ///
    /// Walks the error's source chain for the types this crate knows: the retry layer's error
    /// (outcome unknown, Retry-After too long, deadline), an [`OAuthError`] from the token source,
    /// a timeout. Anything else is a [`GenesysError::Transport`].
    pub fn from_stack(err: BoxError) -> Self {
        classify(err)
    }

    /// Whether the call failed because a proxy on the way refused the tunnel (its credentials,
    /// or its rules: a 4xx answer to `CONNECT` but 408 and 429). Nothing was sent, and asking
    /// again would be refused again; see [`proxy`](crate::proxy).
    pub fn is_proxy_refusal(&self) -> bool {
        crate::proxy::refused_in(self)
    }

    /// Whether the call failed for want of a token, while the login host was unavailable: it
    /// answered 429 or 5xx past the token source's own retries, could not be reached, did not
    /// answer in time, or answered something that is not a token (a captive portal's page).
    /// Nothing was sent, and the same call may succeed once the login host is back. A refusal of
    /// the credentials is not this (see [`OAuthError::is_bad_credentials`]), nor an invalid
    /// token URL.
    pub fn is_token_unavailable(&self) -> bool {
        if self.may_have_been_applied() {
            // An earlier attempt may have been applied before a later one found no token.
            return false;
        }
        if self.is_proxy_refusal() {
            // A proxy that refuses the tunnel to the login host: a setting to fix.
            return false;
        }
        match self {
            GenesysError::OAuth(e) => e.is_unavailable(),
            GenesysError::Transport { source } => {
                match find::<TokenError>(&**source) {
                    // An invalid token URL: a setting to fix, not an outage to wait out. A login
                    // host that answers something that is not a token (a captive portal, a
                    // proxy's page) is waited out like one that is down; at the start of a
                    // job it ends the run at once.
                    Some(TokenError::Request(_)) => false,
                    Some(TokenError::OAuth(e)) => e.is_unavailable(),
                    Some(_) => true,
                    // Another token source's failure, or the auth layer's fetch timeout.
                    None => {
                        find::<auth::Error>(&**source).is_some_and(auth::Error::is_token_source)
                    }
                }
            }
            _ => false,
        }
    }
}

fn classify(err: BoxError) -> GenesysError {
    // Already one of ours (a layer passed it through).
    let err = match err.downcast::<GenesysError>() {
        Ok(e) => return *e,
        Err(e) => e,
    };
    // The outcome is unknown (an attempt may have been applied), whatever ended the call after
    // it: a refusal at the login host on a later attempt does not unmake the earlier one. The
    // same when the idempotency store cannot vouch for an earlier call with the caller's key.
    if find::<retry::Error>(&*err).is_some_and(retry::Error::is_outcome_unknown)
        || matches!(
            find::<genesys_tower::idempotency::Error>(&*err),
            Some(genesys_tower::idempotency::Error::OutcomeUnknown { .. })
        )
    {
        return GenesysError::OutcomeUnknown { source: err };
    }
    // The login host refused the credentials: say so, wherever it sits in the chain.
    if let Some(oauth) = find_oauth(&*err) {
        return GenesysError::OAuth(oauth);
    }
    if let Some(&genesys_tower::read_body::Error::TooLarge { status, limit, .. }) =
        find::<genesys_tower::read_body::Error>(&*err)
    {
        return GenesysError::ResponseTooLarge {
            status,
            limit,
            source: err,
        };
    }
    if let Some(r) = find::<retry::Error>(&*err) {
        let retry_after = r.retry_after();
        return match r.kind() {
            ErrorKind::OutcomeUnknown => GenesysError::OutcomeUnknown { source: err },
            ErrorKind::RetryAfterTooLong => GenesysError::RetryAfterTooLong {
                retry_after: retry_after.unwrap_or_default(),
                source: err,
            },
            ErrorKind::DeadlineExceeded => GenesysError::DeadlineExceeded {
                retry_after,
                source: err,
            },
            _ => GenesysError::Transport { source: err },
        };
    }
    GenesysError::Transport { source: err }
}

fn find_oauth(err: &(dyn StdError + 'static)) -> Option<OAuthError> {
    if let Some(t) = find::<TokenError>(err) {
        // Only a refusal is an OAuth error; a login host that stayed unavailable is a transport
        // failure (its TokenError, in the chain, says so).
        return match t {
            TokenError::OAuth(e) => Some(e.clone()),
            _ => None,
        };
    }
    find::<OAuthError>(err).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(status: u16, code: &str) -> OAuthError {
        OAuthError {
            error: crate::error::OAuthErrorKind::Other(code.to_owned()),
            description: None,
            status: StatusCode::from_u16(status).unwrap(),
        }
    }

    /// Only a login host that could not judge the credentials is an outage to wait out: not a
    /// refusal, not a setting to fix.
    #[test]
    fn a_token_is_unavailable_only_while_the_login_host_is() {
        let transport = |e: TokenError| GenesysError::Transport {
            source: Box::new(e),
        };
        let unavailable = [
            GenesysError::OAuth(oauth(503, "temporarily_unavailable")),
            GenesysError::OAuth(oauth(429, "")),
            transport(TokenError::Transport("connection refused".into())),
            transport(TokenError::Malformed("not a token".into())),
            transport(TokenError::GaveUp {
                attempts: 4,
                last: Box::new(TokenError::OAuth(oauth(502, ""))),
            }),
        ];
        for e in &unavailable {
            assert!(e.is_token_unavailable(), "{e}");
        }
        let not = [
            GenesysError::OAuth(oauth(401, "invalid_client")),
            GenesysError::OAuth(oauth(400, "invalid_request")),
            transport(TokenError::Request("an invalid token URL".into())),
            GenesysError::Transport {
                source: "connection reset".into(),
            },
        ];
        for e in &not {
            assert!(!e.is_token_unavailable(), "{e}");
        }
    }
}
