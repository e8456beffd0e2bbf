//! Tests of `settings`: the file, its profiles, and the layers' precedence.

use clap::Parser;
use genesys_client::config::Origin;

use super::*;
use crate::cli::Cli;

fn temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gcx-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn common(args: &[&str]) -> Common {
    let mut argv = vec!["gcx"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["config", "show"]);
    Cli::try_parse_from(argv).unwrap().common
}

fn no_env(_: &str) -> Option<String> {
    None
}

const FILE: &str = r#"
[retry]
max_attempts = 3
[concurrency]
limit = 4

[profiles.prod]
region = "eu-west-1"
client_id_env = "PROD_ID"
client_secret_env = "PROD_SECRET"
[profiles.prod.retry]
max_attempts = 5

[profiles.staging]
base_url = "https://api.staging.example"
"#;

#[test]
fn a_profile_wins_over_the_file_and_the_environment_over_both() {
    let path = temp("layers.toml", FILE);
    let file = path.to_str().unwrap();

    let s = load_with(&common(&["--config", file]), no_env).unwrap();
    assert_eq!(s.layered.config().retry.max_attempts, 3);
    assert_eq!(
        s.layered.origin("retry.max_attempts"),
        Some(&Origin::File(file.to_owned()))
    );
    assert!(s.profile.is_none());

    let s = load_with(&common(&["--config", file, "--profile", "prod"]), no_env).unwrap();
    assert_eq!(s.layered.config().retry.max_attempts, 5);
    assert_eq!(
        s.layered.origin("retry.max_attempts"),
        Some(&Origin::Profile("prod".into()))
    );
    // The file's own settings stay where the profile is silent.
    assert_eq!(s.layered.config().concurrency.limit, 4);
    let p = s.profile.unwrap();
    assert_eq!(p.region.as_deref(), Some("eu-west-1"));
    assert_eq!(p.client_secret_env.as_deref(), Some("PROD_SECRET"));

    let env = |name: &str| (name == "GCX_RETRY_MAX_ATTEMPTS").then(|| "6".to_owned());
    let s = load_with(&common(&["--config", file, "--profile", "prod"]), env).unwrap();
    assert_eq!(s.layered.config().retry.max_attempts, 6);
    assert_eq!(
        s.layered.origin("retry.max_attempts"),
        Some(&Origin::Env("GCX_RETRY_MAX_ATTEMPTS".into()))
    );
}

#[test]
fn the_default_file_is_read_from_the_config_home() {
    let path = temp("home/gcx/config.toml", FILE);
    let home = path.parent().unwrap().parent().unwrap().to_owned();
    let env = |name: &str| (name == "XDG_CONFIG_HOME").then(|| home.display().to_string());
    let s = load_with(&common(&["--profile", "staging"]), env).unwrap();
    assert_eq!(
        s.profile.unwrap().base_url.as_deref(),
        Some("https://api.staging.example")
    );
    // No file there: the defaults, and a profile is refused with where profiles live.
    let env = |name: &str| (name == "XDG_CONFIG_HOME").then(|| "/nonexistent".to_owned());
    let s = load_with(&common(&[]), env).unwrap();
    assert!(s.layered.is_default());
    let err = load_with(&common(&["--profile", "prod"]), env).unwrap_err();
    assert!(err.to_string().contains("[profiles.NAME]"), "{err}");
}

/// A syntax error is placed by line and column; the line, which may hold a password, is not
/// repeated.
#[test]
fn a_toml_syntax_error_does_not_repeat_the_line() {
    let path = temp(
        "broken.toml",
        "[idempotency]\nstore = \"redis://:hunter2-secret@cache:6379\n",
    );
    let args = ["--config", path.to_str().unwrap()];
    let err = load_with(&common(&args), no_env).unwrap_err();
    assert_eq!(err.code(), 2);
    let msg = err.to_string();
    assert!(msg.contains("line 2"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[test]
fn an_unknown_profile_is_refused_with_the_files_profiles() {
    let path = temp("unknown.toml", FILE);
    let args = ["--config", path.to_str().unwrap(), "--profile", "qa"];
    let err = load_with(&common(&args), no_env).unwrap_err();
    assert_eq!(err.code(), 2);
    let msg = err.to_string();
    assert!(msg.contains("no [profiles.qa]"), "{msg}");
    assert!(msg.contains("prod, staging"), "{msg}");
}

#[test]
fn every_problem_of_a_profile_is_named_by_its_path() {
    let path = temp(
        "bad.toml",
        r#"
[profiles.prod]
region = "eu-west-1"
base_url = "https://x.example"
client_secret = "s3cr3t"
client_id = ""
[profiles.prod.retry]
max_atempts = 5
"#,
    );
    let args = ["--config", path.to_str().unwrap(), "--profile", "prod"];
    let msg = load_with(&common(&args), no_env).unwrap_err().to_string();
    for want in [
        "profiles.prod.base_url: give region or base_url, not both",
        "profiles.prod.client_secret: a secret does not belong in a file",
        "profiles.prod.client_id: a non-empty string",
    ] {
        assert!(msg.contains(want), "{want}: {msg}");
    }
    assert!(!msg.contains("s3cr3t"), "the secret is never shown: {msg}");
    // The stack's keys are checked once the connection's are right.
    let path = temp(
        "bad_key.toml",
        "[profiles.prod.retry]\nmax_atempts = 5\n[profiles.prod.concurrency]\nlimit = \"x\"\n",
    );
    let args = ["--config", path.to_str().unwrap(), "--profile", "prod"];
    let msg = load_with(&common(&args), no_env).unwrap_err().to_string();
    assert!(
        msg.contains("profiles.prod.retry.max_atempts: no such setting"),
        "{msg}"
    );
    assert!(msg.contains("profiles.prod.concurrency.limit"), "{msg}");
}

#[test]
fn the_files_own_settings_are_checked_with_their_paths() {
    let path = temp("bad_file.toml", "[retry]\nmax_attempts = 50\n");
    let msg = load_with(&common(&["--config", path.to_str().unwrap()]), no_env)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("retry.max_attempts"), "{msg}");
    let path = temp("not_toml.toml", "[retry\n");
    let msg = load_with(&common(&["--config", path.to_str().unwrap()]), no_env)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not a valid configuration"), "{msg}");
}
