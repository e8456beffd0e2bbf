//! gcx's configuration file: the stack's settings, and named profiles.
//!
//! The file is `--config FILE` (or `$GCX_CONFIG`), else `$XDG_CONFIG_HOME/gcx/config.toml` (or
//! `~/.config/gcx/config.toml`) when it exists. TOML, or JSON by its extension:
//!
//! ```toml
//! [retry]                       # the stack's settings, for every profile
//! max_attempts = 5
//!
//! [profiles.prod]               # --profile prod (or GCX_PROFILE=prod)
//! region = "eu-west-1"
//! client_id = "8f0c..."          # or client_id_env = "PROD_CLIENT_ID"
//! client_secret_env = "PROD_CLIENT_SECRET"
//! [profiles.prod.retry]
//! max_attempts = 6
//! ```
//!
//! Settings are layered default < file < profile < environment < flag; the connection
//! (region, base URL, credentials) is flag > environment > profile. A secret is never read from
//! the file: a profile names the variable that holds it.

use std::path::{Path, PathBuf};

use genesys_client::config::{Layered, Origin};
use serde_json::{Map, Value};

use crate::cli::Common;
use crate::error::CliError;
use crate::store::{Canary, Store};

/// The profile's keys that are not the stack's settings.
const CONNECTION_KEYS: [&str; 6] = [
    "region",
    "base_url",
    "login_url",
    "client_id",
    "client_id_env",
    "client_secret_env",
];

/// The largest configuration file read.
const MAX_FILE: u64 = 1024 * 1024;

/// A named profile: where to connect and with which credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Profile {
    pub(crate) name: String,
    pub(crate) region: Option<String>,
    pub(crate) base_url: Option<String>,
    pub(crate) login_url: Option<String>,
    pub(crate) client_id: Option<String>,
    /// The variable holding the client id.
    pub(crate) client_id_env: Option<String>,
    /// The variable holding the client secret.
    pub(crate) client_secret_env: Option<String>,
}

/// The stack's settings with their origins, and the profile chosen.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) layered: Layered,
    pub(crate) profile: Option<Profile>,
    /// The policy store's stable version, when it has one (its settings are in `layered`).
    pub(crate) stable: Option<String>,
    /// The policy store's canary, when one runs, and the settings a call on its share runs.
    pub(crate) canary: Option<(Canary, Layered)>,
}

/// Reads the configuration file (if any), applies the profile, then the environment; flags are
/// applied by the caller.
pub(crate) fn load(common: &Common) -> Result<Settings, CliError> {
    load_with(common, |name| std::env::var(name).ok())
}

/// [`load`], with the environment read through `env`.
pub(crate) fn load_with(
    common: &Common,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Settings, CliError> {
    let file = match &common.config {
        Some(path) => Some(path.clone()),
        None => default_file(&env).filter(|p| p.is_file()),
    };
    let profile_name = common.profile.clone();
    let (mut layered, profile) = match &file {
        None => {
            if let Some(name) = &profile_name {
                return Err(CliError::usage(format!(
                    "--profile {name}: there is no configuration file; profiles are tables \
                     [profiles.NAME] of --config FILE (or ~/.config/gcx/config.toml)"
                )));
            }
            (Layered::defaults(), None)
        }
        Some(path) => from_file(path)?,
    };
    // The policy store's version over the file, then the profile, then the environment: once
    // with the stable version, once more with the canary's when one runs.
    let chosen = match (profile, profile_name) {
        (Some(profiles), Some(name)) => {
            let (profile, settings) = choose(&profiles, &name)?;
            Some((profile, settings, name, profiles.path))
        }
        _ => None,
    };
    let over = |layered: Layered| -> Result<Layered, CliError> {
        let layered = match &chosen {
            Some((_, settings, name, path)) => layered
                .apply(
                    settings,
                    Origin::Profile(name.clone()),
                    &format!("profiles.{name}"),
                )
                .map_err(|e| invalid(path, &e))?,
            None => layered,
        };
        layered.env(&env).map_err(|e| {
            CliError::usage(format!(
                "the environment sets the stack's configuration wrongly:\n{e}"
            ))
        })
    };
    let store = crate::store::store_dir(common, &env).and_then(|dir| Store::existing(&dir));
    let mut stable = None;
    let mut canary = None;
    if let Some(store) = &store {
        let state = store.state()?;
        if let Some(version) = &state.stable {
            let (id, tree) = store.version(version)?;
            layered = layered
                .apply(&tree, Origin::Policy(format!("{id} (stable)")), "")
                .map_err(|e| policy_error(store, &id, &e))?;
            stable = Some(id);
        }
        // A canary is laid over the stable version: what it sets, and the rest as stable.
        if let Some(c) = state.canary {
            let (id, tree) = store.version(&c.version)?;
            let with = layered
                .clone()
                .apply(&tree, Origin::Policy(format!("{id} (canary)")), "")
                .map_err(|e| policy_error(store, &id, &e))?;
            canary = Some((c, over(with)?));
        }
    }
    Ok(Settings {
        layered: over(layered)?,
        profile: chosen.map(|(profile, ..)| profile),
        stable,
        canary,
    })
}

fn policy_error(store: &Store, id: &str, e: &dyn std::fmt::Display) -> CliError {
    CliError::usage(format!(
        "the policy store {}: version {id} no longer fits with the other settings:\n{e}\n\
         roll it back (gcx policy rollback) or apply a version that does",
        store.shown()
    ))
}

/// A file's profiles.
struct Profiles {
    path: PathBuf,
    map: Map<String, Value>,
}

/// The profile `name` of `profiles`, split into its connection and its settings.
fn choose(profiles: &Profiles, name: &str) -> Result<(Profile, Value), CliError> {
    let path = &profiles.path;
    let Some(table) = profiles.map.get(name) else {
        let mut names: Vec<&str> = profiles.map.keys().map(String::as_str).collect();
        names.sort_unstable();
        return Err(CliError::usage(format!(
            "--profile {name}: no [profiles.{name}] in {}; its profiles: {}",
            path.display(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    split_profile(name, table).map_err(|problems| invalid(path, &problems.join("\n")))
}

/// `$XDG_CONFIG_HOME/gcx/config.toml`, else `~/.config/gcx/config.toml`.
fn default_file(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("gcx").join("config.toml"))
}

fn invalid(path: &Path, e: &dyn std::fmt::Display) -> CliError {
    CliError::usage(format!(
        "{}: not a valid configuration:\n{e}",
        path.display()
    ))
}

/// A configuration file as a tree (TOML, or JSON by its extension), read with a size bound.
pub(crate) fn read_tree(path: &Path) -> Result<Value, CliError> {
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|f| {
        std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_FILE + 1), &mut text)
    });
    read.map_err(|e| invalid(path, &format!("cannot be read: {e}")))?;
    if text.len() as u64 > MAX_FILE {
        return Err(invalid(
            path,
            &format!("larger than {MAX_FILE} bytes; a configuration is a few lines"),
        ));
    }
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let tree: Value = if json {
        serde_json::from_str(&text).map_err(|e| invalid(path, &e))?
    } else {
        toml::from_str(&text).map_err(|e| invalid(path, &toml_error(&text, &e)))?
    };
    if !tree.is_object() {
        return Err(invalid(path, &"the file is not a table of settings"));
    }
    Ok(tree)
}

/// A TOML error by its line and column, without the line itself: the line may hold a secret
/// (a password in a Redis URL whose quote is never closed).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML syntax error at line {line}, column {column}: {message}")
        }
        None => format!("TOML syntax error: {message}"),
    }
}

/// The file's settings, and its profiles.
fn from_file(path: &Path) -> Result<(Layered, Option<Profiles>), CliError> {
    let mut tree = read_tree(path)?;
    let Some(root) = tree.as_object_mut() else {
        return Err(invalid(path, &"the file is not a table of settings"));
    };
    let profiles = root.remove("profiles");
    let shown = path.display().to_string();
    let layered = Layered::defaults()
        .apply(&tree, Origin::File(shown), "")
        .map_err(|e| invalid(path, &e))?;
    let map = match profiles {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(invalid(
                path,
                &"profiles: a table of [profiles.NAME] tables",
            ));
        }
    };
    let profiles = Profiles {
        path: path.to_owned(),
        map,
    };
    Ok((layered, Some(profiles)))
}

/// A profile's table split into its connection and its stack settings; or every problem, each
/// with its key's path.
fn split_profile(name: &str, table: &Value) -> Result<(Profile, Value), Vec<String>> {
    let at = |key: &str, what: &str| format!("profiles.{name}.{key}: {what}");
    let Some(map) = table.as_object() else {
        return Err(vec![format!("profiles.{name}: a table of settings")]);
    };
    let mut profile = Profile {
        name: name.to_owned(),
        ..Profile::default()
    };
    let mut settings = Map::new();
    let mut problems = Vec::new();
    for (key, value) in map {
        if key.contains("secret") && !key.ends_with("_env") {
            problems.push(at(
                key,
                "a secret does not belong in a file: name the variable that holds it with \
                 client_secret_env",
            ));
            continue;
        }
        if !CONNECTION_KEYS.contains(&key.as_str()) {
            settings.insert(key.clone(), value.clone());
            continue;
        }
        let Some(text) = value.as_str().map(str::trim).filter(|t| !t.is_empty()) else {
            problems.push(at(key, "a non-empty string"));
            continue;
        };
        let slot = match key.as_str() {
            "region" => &mut profile.region,
            "base_url" => &mut profile.base_url,
            "login_url" => &mut profile.login_url,
            "client_id" => &mut profile.client_id,
            "client_id_env" => &mut profile.client_id_env,
            _ => &mut profile.client_secret_env,
        };
        *slot = Some(text.to_owned());
    }
    if profile.region.is_some() && profile.base_url.is_some() {
        problems.push(at("base_url", "give region or base_url, not both"));
    }
    if profile.client_id.is_some() && profile.client_id_env.is_some() {
        problems.push(at(
            "client_id_env",
            "give client_id or client_id_env, not both",
        ));
    }
    if problems.is_empty() {
        Ok((profile, Value::Object(settings)))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests;
