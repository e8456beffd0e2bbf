//! Data actions: execute and test.
//!
//! `POST /api/v2/integrations/actions/{actionId}/execute` runs the action with its input; `/test`
//! runs it and reports each step. Genesys does **not** honour `Idempotency-Key` on these routes,
//! so a key alone cannot make a replay safe: the requests are marked [`RetrySafety::Unsafe`].
//! A 429 or a 503 is still retried (the server said it did not run the action), but a failure
//! after the request may have reached the server (a reset, a timeout, or a 500, 502, 504 or
//! another 5xx but 501, 503, 505 and 511, which a gateway or a CDN can answer after the action
//! ran) ends the call with
//! [`GenesysError::OutcomeUnknown`]: the action may or may not have run, and the caller decides.

use genesys_tower::retry::RetrySafety;
use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{GenesysClient, segment};
use crate::error::GenesysError;

/// Options of [`GenesysClient::execute_action_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecuteOptions {
    /// Ask for a flattened output (`?flatten=true`).
    pub flatten: bool,
}

impl ExecuteOptions {
    /// Sets [`flatten`](Self::flatten).
    pub fn flatten(mut self, flatten: bool) -> Self {
        self.flatten = flatten;
        self
    }
}

/// The answer of `POST /api/v2/integrations/actions/{actionId}/test`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct ActionTestResult {
    /// Each step the action ran.
    pub operations: Vec<Value>,
    /// The error, when the test failed.
    pub error: Option<Value>,
    /// The action's output.
    pub final_result: Option<Value>,
    /// Whether the action succeeded.
    pub success: bool,
}

impl GenesysClient {
    /// Executes a data action with `input` (a JSON object shaped by the action's input schema)
    /// and returns its output.
    ///
    /// Never replayed after an ambiguous failure: see the [module docs](self).
    pub async fn execute_action(
        &self,
        action_id: &str,
        input: &Value,
    ) -> Result<Value, GenesysError> {
        self.execute_action_with(action_id, input, ExecuteOptions::default())
            .await
    }

    /// [`execute_action`](Self::execute_action) with options.
    pub async fn execute_action_with(
        &self,
        action_id: &str,
        input: &Value,
        options: ExecuteOptions,
    ) -> Result<Value, GenesysError> {
        let mut path = format!(
            "/api/v2/integrations/actions/{}/execute",
            segment(action_id)
        );
        if options.flatten {
            path.push_str("?flatten=true");
        }
        self.run_action(&path, input).await
    }

    /// Tests a data action with `input`: runs it and reports each step.
    ///
    /// A test runs the action for real, so it is never replayed after an ambiguous failure either.
    pub async fn test_action(
        &self,
        action_id: &str,
        input: &Value,
    ) -> Result<ActionTestResult, GenesysError> {
        let path = format!("/api/v2/integrations/actions/{}/test", segment(action_id));
        self.run_action(&path, input).await
    }

    /// Sends a data action request: never replayed after an ambiguous outcome, and a gateway
    /// error is reported as what it is for an action, an unknown outcome.
    async fn run_action<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        input: &Value,
    ) -> Result<T, GenesysError> {
        // Marked unsafe to repeat, a gateway error is an unknown outcome (`GenesysClient::call`).
        self.json(Method::POST, path, Some(input), Some(RetrySafety::Unsafe))
            .await
    }
}
