//! Seeded entities: users and integrations, with ids that depend only on the seed and an index.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::faults::rng_for;

const STREAM_USERS: u64 = 1;
const STREAM_INTEGRATIONS: u64 = 2;

const FIRST: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Dennis",
    "Radia",
    "Tim",
    "Sophie",
    "Linus",
    "Hedy",
    "John",
    "Katherine",
    "Niklaus",
    "Leslie",
    "Shafi",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Ritchie",
    "Perlman",
    "Berners-Lee",
    "Wilson",
    "Torvalds",
    "Lamarr",
    "Backus",
    "Johnson",
    "Wirth",
    "Lamport",
    "Goldwasser",
];
const TITLES: &[&str] = &[
    "Agent",
    "Senior Agent",
    "Team Lead",
    "Supervisor",
    "Quality Analyst",
    "Workforce Planner",
];
const DEPARTMENTS: &[&str] = &["Sales", "Support", "Billing", "Retention", "Onboarding"];

/// The id of the seeded user number `index` (0-based) under `seed`: a UUID that depends only on
/// both, so tests can name users without listing them first.
///
/// ```
/// let id = genesys_sim::user_id(0, 0);
/// assert_eq!(id.len(), 36);
/// assert_eq!(id, genesys_sim::user_id(0, 0));
/// assert_ne!(id, genesys_sim::user_id(1, 0));
/// ```
pub fn user_id(seed: u64, index: usize) -> String {
    let mut rng = rng_for(seed, STREAM_USERS, index as u64);
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

/// The id of the seeded integration number `index` (0-based) under `seed`.
pub fn integration_id(seed: u64, index: usize) -> String {
    let mut rng = rng_for(seed, STREAM_INTEGRATIONS, index as u64);
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

/// A user as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct User {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) username: String,
    pub(crate) title: String,
    pub(crate) department: String,
    pub(crate) state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) preferred_name: Option<String>,
    pub(crate) acd_auto_answer: bool,
    pub(crate) version: u64,
    pub(crate) self_uri: String,
}

impl User {
    fn seeded(seed: u64, index: usize) -> Self {
        let id = user_id(seed, index);
        // A second stream for the fields, so the id does not depend on the field lists.
        let mut rng = rng_for(seed ^ 0x5EED, STREAM_USERS, index as u64);
        let first = FIRST[rng.random_range(0..FIRST.len())];
        let last = LAST[rng.random_range(0..LAST.len())];
        let email = format!(
            "{}.{}{}@example.com",
            first.to_lowercase(),
            last.to_lowercase(),
            index + 1
        );
        Self {
            self_uri: format!("/api/v2/users/{id}"),
            id,
            name: format!("{first} {last}"),
            username: email.clone(),
            email,
            title: TITLES[rng.random_range(0..TITLES.len())].to_string(),
            department: DEPARTMENTS[rng.random_range(0..DEPARTMENTS.len())].to_string(),
            state: "active".to_string(),
            preferred_name: None,
            acd_auto_answer: false,
            version: rng.random_range(1..=20),
        }
    }
}

/// Every seeded user, each behind its own lock (no global lock on the hot path).
#[derive(Debug)]
pub(crate) struct Users {
    pub(crate) list: Vec<Mutex<User>>,
    index: HashMap<String, usize>,
}

impl Users {
    pub(crate) fn seeded(seed: u64, n: usize) -> Self {
        let list: Vec<Mutex<User>> = (0..n).map(|i| Mutex::new(User::seeded(seed, i))).collect();
        let index = list
            .iter()
            .enumerate()
            .map(|(i, u)| (lock(u).id.clone(), i))
            .collect();
        Self { list, index }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Mutex<User>> {
        self.index.get(id).map(|&i| &self.list[i])
    }
}

/// Locks a mutex, recovering from poisoning (a panicked handler must not wedge the simulator).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The seeded integration config (`amazon-eventbridge-source` properties).
pub(crate) fn seeded_integration(id: &str, index: usize) -> Map<String, Value> {
    let v = json!({
        "id": id,
        "name": format!("EventBridge {}", index + 1),
        "version": 1,
        "properties": {
            "awsAccountId": "123456789012",
            "awsAccountRegion": "us-east-1",
            "eventSourceSuffix": format!("sim-{}", index + 1),
            "eventFilter": ["v2.users.{id}.presence"]
        },
        "advanced": {},
        "notes": "",
        "credentials": {},
        "selfUri": format!("/api/v2/integrations/{id}/config/current")
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
