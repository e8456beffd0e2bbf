//! A configuration built in layers (defaults, a file, the environment, flags), each setting with
//! the layer it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{ConfigError, ConfigProblem, StackConfig, read_file};

/// Where a setting's value came from. Later layers win: default < file < policy < profile <
/// environment < flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Origin {
    /// The client's default.
    Default,
    /// A configuration file (its path).
    File(String),
    /// A named profile of a configuration file (its name).
    Profile(String),
    /// A version of a policy store (its id, and whether it is the stable version or a canary).
    Policy(String),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its name).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "file {path}"),
            Origin::Profile(name) => write!(f, "profile {name}"),
            Origin::Policy(version) => write!(f, "policy {version}"),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// A [`StackConfig`] built in layers, with where each setting came from.
///
/// Every key can be set from the environment: `retry.max_attempts` by
/// `GCX_RETRY_MAX_ATTEMPTS`, `timeouts.attempt` by `GCX_TIMEOUTS_ATTEMPT` (the key's path in
/// capitals, dots as underscores, after `GCX_`). A value is read as JSON when it is JSON (`4`,
/// `true`, `[429, 503]`, `"30s"`) and as text otherwise (`30s`, `full`).
///
/// ```
/// use genesys_client::config::{Layered, Origin};
///
/// let env = |name: &str| (name == "GCX_RETRY_MAX_ATTEMPTS").then(|| "6".to_owned());
/// let layered = Layered::defaults().env(env).unwrap();
/// assert_eq!(layered.config().retry.max_attempts, 6);
/// let origin = layered.origin("retry.max_attempts");
/// assert_eq!(origin, Some(&Origin::Env("GCX_RETRY_MAX_ATTEMPTS".into())));
/// ```
#[derive(Debug, Clone)]
pub struct Layered {
    config: StackConfig,
    origins: BTreeMap<String, Origin>,
}

impl Layered {
    /// The defaults, every setting from [`Origin::Default`].
    #[must_use]
    pub fn defaults() -> Self {
        let config = StackConfig::default();
        let origins = leaves(&to_value(&config))
            .into_keys()
            .map(|path| (path, Origin::Default))
            .collect();
        Layered { config, origins }
    }

    /// The defaults, then the file at `path` (TOML, or JSON by its extension), validated.
    pub fn file(path: &Path) -> Result<Self, ConfigError> {
        let config = StackConfig::from_path(path)?;
        let (text, json) = read_file(path)?;
        // The file parsed as a StackConfig just above: here only its keys are read.
        let raw: Value = if json {
            serde_json::from_str(&text).unwrap_or_default()
        } else {
            toml::from_str(&text).unwrap_or_default()
        };
        let mut layered = Layered::defaults();
        let shown = path.display().to_string();
        for path in leaves(&raw).into_keys() {
            if let Some(origin) = layered.origins.get_mut(&path) {
                *origin = Origin::File(shown.clone());
            }
        }
        layered.config = config;
        Ok(layered)
    }

    /// Applies every setting of `tree` (a partial configuration: `{"retry": {"max_attempts":
    /// 6}}`) from `origin`, then checks the bounds. Unknown keys and values of the wrong type
    /// are refused, every problem at once, each named by its path under `prefix` (where the
    /// tree sits in its file, e.g. `profiles.prod`); bounds are checked on the settings
    /// together.
    pub fn apply(self, tree: &Value, origin: Origin, prefix: &str) -> Result<Self, ConfigError> {
        let named = |path: &str| {
            if prefix.is_empty() {
                path.to_owned()
            } else {
                format!("{prefix}.{path}")
            }
        };
        let mut layered = self;
        let mut problems = Vec::new();
        for (path, value) in leaves(tree) {
            match layered.clone().set_unchecked(&path, value, origin.clone()) {
                Ok(next) => layered = next,
                Err(e) => problems.extend(e.problems().iter().map(|p| ConfigProblem {
                    path: named(&p.path),
                    message: p.message.clone(),
                })),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        // Bounds are of the settings together, whichever layer each came from.
        layered.config.validate()?;
        Ok(layered)
    }

    /// Applies the environment, read through `lookup` (`|name| std::env::var(name).ok()`):
    /// every key's `GCX_` variable that is set. Every problem is reported at once, naming the
    /// variable.
    pub fn env(self, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let paths: Vec<String> = self.origins.keys().cloned().collect();
        let mut layered = self;
        let mut problems = Vec::new();
        for path in paths {
            if path == "profile" {
                // GCX_PROFILE names a profile of the file (gcx's --profile), not this key.
                continue;
            }
            let name = Layered::env_var(&path);
            let Some(text) = lookup(&name) else { continue };
            match layered
                .clone()
                .set_text(&path, &text, Origin::Env(name.clone()))
            {
                Ok(next) => layered = next,
                Err(e) => problems.extend(e.problems().iter().map(|p| ConfigProblem {
                    path: p.path.clone(),
                    message: format!(
                        "{} (from {name}={:?})",
                        p.message,
                        super::redact_userinfo(&text)
                    ),
                })),
            }
        }
        if problems.is_empty() {
            Ok(layered)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Sets `path` to `value` from `origin` (a flag), and validates.
    pub fn set(self, path: &str, value: Value, origin: Origin) -> Result<Self, ConfigError> {
        let set = self.set_unchecked(path, value, origin)?;
        set.config.validate()?;
        Ok(set)
    }

    /// Sets `path` to `value` if it has the setting's type; the bounds are not checked.
    fn set_unchecked(
        mut self,
        path: &str,
        value: Value,
        origin: Origin,
    ) -> Result<Self, ConfigError> {
        if !self.origins.contains_key(path) {
            return Err(ConfigError::one(path, "no such setting"));
        }
        let mut tree = to_value(&self.config);
        put(&mut tree, path, value);
        self.config =
            serde_json::from_value(tree).map_err(|e| ConfigError::one(path, e.to_string()))?;
        self.origins.insert(path.to_owned(), origin);
        Ok(self)
    }

    /// Sets `path` from text: as JSON when that has the setting's type (`4`, `true`, a list),
    /// else as a string (`30s`, `full`); then checks the bounds.
    fn set_text(self, path: &str, text: &str, origin: Origin) -> Result<Self, ConfigError> {
        let typed = serde_json::from_str::<Value>(text.trim())
            .ok()
            .and_then(|value| self.clone().set_unchecked(path, value, origin.clone()).ok());
        let set = match typed {
            Some(set) => set,
            None => self.set_unchecked(path, Value::String(text.trim().to_owned()), origin)?,
        };
        set.config.validate()?;
        Ok(set)
    }

    /// The environment variable of a key: `retry.max_attempts` is `GCX_RETRY_MAX_ATTEMPTS`.
    #[must_use]
    pub fn env_var(path: &str) -> String {
        format!("GCX_{}", path.replace('.', "_").to_ascii_uppercase())
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// Where the setting at `path` came from.
    #[must_use]
    pub fn origin(&self, path: &str) -> Option<&Origin> {
        self.origins.get(path)
    }

    /// Whether any setting came from somewhere other than the defaults.
    #[must_use]
    pub fn is_default(&self) -> bool {
        self.origins.values().all(|o| *o == Origin::Default)
    }

    /// Every setting, in path order, with its value and where it came from.
    #[must_use]
    pub fn entries(&self) -> Vec<(String, Value, Origin)> {
        let values = leaves(&to_value(&self.config));
        self.origins
            .iter()
            .map(|(path, origin)| {
                let value = values.get(path).cloned().unwrap_or(Value::Null);
                (path.clone(), value, origin.clone())
            })
            .collect()
    }
}

fn to_value(config: &StackConfig) -> Value {
    // Plain data (numbers, strings, lists): it always serializes.
    serde_json::to_value(config).unwrap_or_default()
}

/// The settings of a tree: objects are descended, anything else (lists included) is a setting.
fn leaves(value: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, child, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// Sets the setting at a dotted path, making the sections on the way.
fn put(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        if keys.peek().is_none() {
            map.insert(key.to_owned(), value);
            return;
        }
        node = map
            .entry(key.to_owned())
            .or_insert(Value::Object(Map::new()));
    }
}
