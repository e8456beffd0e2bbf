use super::*;

/// The problems of a TOML text, as `path: message` lines.
fn problems(toml: &str) -> Vec<String> {
    match StackConfig::from_toml(toml) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems()
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect(),
    }
}

#[test]
fn an_empty_file_is_the_defaults() {
    let config = StackConfig::from_toml("").unwrap();
    assert_eq!(config, StackConfig::default());
    assert_eq!(config.retry.max_attempts, 4);
    assert_eq!(config.retry.base_delay.0, Duration::from_millis(500));
}

#[test]
fn every_rule_has_its_message() {
    let cases = [
        (
            "[retry]\nmax_attempts = 0",
            "retry.max_attempts: 0 is outside 1 to 10",
        ),
        (
            "[retry]\nmax_attempts = 11",
            "retry.max_attempts: 11 is outside 1 to 10",
        ),
        (
            "[retry]\nbase_delay = \"50ms\"",
            "retry.base_delay: 50ms is below 100ms",
        ),
        (
            "[retry]\nfactor = 0.5",
            "retry.factor: 0.5 is outside 1 to 10",
        ),
        (
            "[retry]\nbase_delay = \"2s\"\nmax_delay = \"1s\"",
            "retry.max_delay: 1s is below retry.base_delay (2s)",
        ),
        (
            "[retry]\nmax_delay = \"2h\"",
            "retry.max_delay: 2h is above 1h",
        ),
        (
            "[retry]\nmax_retry_after = \"0s\"",
            "retry.max_retry_after: 0s is outside 1s to 1h",
        ),
        (
            "[retry]\ndeadline = \"2days\"",
            "retry.deadline: 2days is outside 1s to 24h",
        ),
        (
            "[retry]\nversion = \"\"",
            "retry.version: give a name of 1 to 64 characters",
        ),
        (
            "[retry.budget]\nretry_ratio = 1.5",
            "retry.budget.retry_ratio: 1.5 is outside 0 to 1",
        ),
        (
            "[retry.budget]\nmin_per_sec = 5000",
            "retry.budget.min_per_sec: 5000 is above 1000",
        ),
        (
            "[retry.budget]\nmax_tokens = 0",
            "retry.budget.max_tokens: 0 is outside 1 to 100000",
        ),
        (
            "[auth]\nrefresh_margin = \"2h\"",
            "auth.refresh_margin: 2h is above 1h",
        ),
        (
            "[concurrency]\nlimit = 0",
            "concurrency.limit: 0 is outside 1 to 1024",
        ),
        (
            "[pacing]\nrate = \"0/60\"",
            "pacing.rate: \"0/60\" is not N/SECS",
        ),
        (
            "[timeouts]\nattempt = \"0s\"",
            "timeouts.attempt: 0s is outside 1s to 10m",
        ),
        (
            "[timeouts]\nbody_idle = \"1h\"",
            "timeouts.body_idle: 1h is outside 1s to 10m",
        ),
        (
            "[bodies]\nmax_response = 10",
            "bodies.max_response: 10 is outside 1024",
        ),
        (
            "[bodies]\nmax_error = 10",
            "bodies.max_error: 10 is outside 1024",
        ),
        (
            "[retry]\nstatuses = [429, 409]",
            "retry.statuses: 409 cannot be retried: only 429 and 500 to 599 can",
        ),
        (
            "[retry]\nstatuses = [408]",
            "retry.statuses: 408 cannot be listed: it is always ambiguous",
        ),
        (
            "[retry]\nstatuses = [413]",
            "retry.statuses: 413 is never retried",
        ),
        (
            "[retry]\nstatuses = [1000]",
            "retry.statuses: 1000 is not an HTTP status",
        ),
        (
            "[retry]\nstatuses = [503, 503]",
            "retry.statuses: 503 is listed twice",
        ),
        (
            "[[retry.routes]]\nmethod = \"post\"\nroute = \"/api/v2/x\"\nsafety = \"unsafe\"",
            "retry.routes[0].method: \"post\" is not one of *, GET",
        ),
        (
            "[[retry.routes]]\nmethod = \"POST\"\nroute = \"api/v2/x\"\nsafety = \"unsafe\"",
            "retry.routes[0].route: \"api/v2/x\" does not start with /",
        ),
        (
            "[[retry.routes]]\nmethod = \"POST\"\nroute = \"/api/v2/x{id}\"\nsafety = \"unsafe\"",
            "retry.routes[0].route: \"/api/v2/x{id}\" has a { } that is not a whole, named segment",
        ),
        (
            "[[retry.routes]]\nmethod = \"POST\"\nroute = \"/api//x\"\nsafety = \"unsafe\"",
            "retry.routes[0].route: \"/api//x\" has an empty segment",
        ),
        (
            "[[retry.routes]]\nmethod = \"POST\"\nroute = \"/api/v2/*\"\nsafety = \"unsafe\"",
            "retry.routes[0].route: \"/api/v2/*\" may hold no query, fragment, wildcard",
        ),
        (
            "[[retry.routes]]\nmethod = \"POST\"\nroute = \"/a\"\nsafety = \"unsafe\"\n\
             [[retry.routes]]\nmethod = \"POST\"\nroute = \"/a\"\nsafety = \"idempotent\"",
            "retry.routes[1]: POST /a is never used: retry.routes[0] (POST /a)",
        ),
        (
            "[[retry.routes]]\nmethod = \"*\"\nroute = \"/u/{id}\"\nsafety = \"unsafe\"\n\
             [[retry.routes]]\nmethod = \"GET\"\nroute = \"/u/me\"\nsafety = \"idempotent\"",
            "retry.routes[1]: GET /u/me is never used: retry.routes[0] (* /u/{id})",
        ),
        (
            "[[retry.routes]]\nmethod = \"POST\"\nroute = \"/u/{}\"\nsafety = \"unsafe\"",
            "retry.routes[0].route: \"/u/{}\" has a { } that is not a whole, named segment",
        ),
        (
            "[idempotency]\nstore = \"rediss://cache:6380\"",
            "idempotency.store: \"rediss://cache:6380\" is neither \"memory\" nor a redis:// URL",
        ),
        (
            "[idempotency]\nstore = \"redis://cache:6379\"\nlock_ttl = \"5s\"",
            "idempotency.lock_ttl: 5s is below 10s with a Redis store",
        ),
        (
            "[idempotency]\nmethods = [\"POST\", \"GET\"]",
            "idempotency.methods: \"GET\" is not one of POST, PATCH, PUT, DELETE",
        ),
        (
            "[idempotency]\nmethods = [\"POST\", \"POST\"]",
            "idempotency.methods: POST is listed twice",
        ),
        (
            "[idempotency]\nstore = \"postgres://db\"",
            "idempotency.store: \"postgres://db\" is neither \"memory\" nor a redis://",
        ),
        (
            "[idempotency]\nstore = \"redis://:hunter2@cache:6379\"",
            "idempotency.store: a URL with credentials or options is refused",
        ),
        (
            "[idempotency]\nstore = \"redis://\"",
            "idempotency.store: \"redis://\" has no host",
        ),
        (
            "[idempotency]\nstore_password_env = \"REDIS_PASSWORD\"",
            "idempotency.store_password_env: is for a Redis store",
        ),
        (
            "[idempotency]\nstore = \"redis://cache:6379\"\nstore_password_env = \"A-B\"",
            "idempotency.store_password_env: \"A-B\" is not an environment variable's name",
        ),
        (
            "[idempotency]\nretention = \"10s\"",
            "idempotency.retention: 10s is outside 1m to 7days",
        ),
        (
            "[idempotency]\nlock_ttl = \"2h\"",
            "idempotency.lock_ttl: 2h is outside 1s to 1h",
        ),
    ];
    for (toml, wanted) in cases {
        let found = problems(toml);
        assert!(
            found.iter().any(|p| p.starts_with(wanted)),
            "{toml:?}: wanted {wanted:?}, got {found:?}"
        );
        assert_eq!(found.len(), 1, "{toml:?}: exactly one problem: {found:?}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let found = problems(
        "[retry]\nmax_attempts = 0\nfactor = 20.0\n[concurrency]\nlimit = 5000\n[bodies]\nmax_error = 1",
    );
    assert_eq!(found.len(), 4, "{found:?}");
}

#[test]
fn a_password_in_the_store_url_never_appears_in_the_message() {
    for store in [
        "redis://:hunter2@cache:6379",
        "valkey://user:hunter2@cache:6379/0",
        "redis://:a/b@hunter2@cache",
    ] {
        let found = problems(&format!("[idempotency]\nstore = \"{store}\"")).join("\n");
        assert!(!found.is_empty() && !found.contains("hunter2"), "{found}");
        let env = |name: &str| (name == "GCX_IDEMPOTENCY_STORE").then(|| store.to_owned());
        let err = Layered::defaults().env(env).unwrap_err().to_string();
        assert!(
            err.contains("GCX_IDEMPOTENCY_STORE") && !err.contains("hunter2"),
            "{err}"
        );
    }
}

#[test]
fn narrower_rules_after_wider_ones_are_refused_but_the_other_order_is_fine() {
    let narrow_first = "[[retry.routes]]\nmethod = \"GET\"\nroute = \"/u/me\"\nsafety = \"unsafe\"\n\
                        [[retry.routes]]\nmethod = \"*\"\nroute = \"/u/{id}\"\nsafety = \"idempotent\"\n\
                        [[retry.routes]]\nmethod = \"POST\"\nroute = \"/v/{id}\"\nsafety = \"unsafe\"\n\
                        [[retry.routes]]\nmethod = \"PATCH\"\nroute = \"/v/{id}\"\nsafety = \"unsafe\"";
    assert!(
        problems(narrow_first).is_empty(),
        "{:?}",
        problems(narrow_first)
    );
}

#[test]
fn a_rule_with_a_method_that_is_none_matches_nothing_even_unvalidated() {
    let mut config = StackConfig::default();
    config.retry.routes.push(RouteRule {
        method: String::new(),
        route: "/api/v2/users/{userId}".to_owned(),
        safety: Safety::Unsafe,
    });
    let policy = config.retry_policy();
    assert_eq!(
        policy.safety_for(&head(http::Method::GET, "/api/v2/users/42")),
        None
    );
}

fn head(method: http::Method, path: &str) -> http::request::Parts {
    http::Request::builder()
        .method(method)
        .uri(format!("https://api.test{path}"))
        .body(())
        .unwrap()
        .into_parts()
        .0
}

#[test]
fn route_rules_give_the_policy_its_safety_first_match_wins() {
    use genesys_tower::retry::RetrySafety;
    let config = StackConfig::from_toml(
        r#"
        [[retry.routes]]
        method = "PATCH"
        route = "/api/v2/users/{userId}"
        safety = "unsafe"
        [[retry.routes]]
        method = "*"
        route = "/api/v2/users/{userId}"
        safety = "idempotent"
        [[retry.routes]]
        method = "POST"
        route = "/api/v2/integrations/actions/{actionId}/execute"
        safety = "key_honoured"
        "#,
    )
    .unwrap();
    let policy = config.retry_policy();
    let safety = |method, path| policy.safety_for(&head(method, path));
    use http::Method;
    assert_eq!(
        safety(Method::PATCH, "/api/v2/users/42"),
        Some(RetrySafety::Unsafe)
    );
    assert_eq!(
        safety(Method::DELETE, "/api/v2/users/42?force=true"),
        Some(RetrySafety::Idempotent)
    );
    assert_eq!(
        safety(Method::POST, "/api/v2/integrations/actions/a1/execute"),
        Some(RetrySafety::KeyHonoured)
    );
    for (method, path) in [
        (Method::GET, "/api/v2/users"),
        (Method::GET, "/api/v2/users/42/roles"),
        (Method::GET, "/api/v2/users//"),
        (Method::GET, "/api/v2/integrations/actions/a1/execute"),
    ] {
        assert_eq!(safety(method.clone(), path), None, "{method} {path}");
    }
    // No rules: the policy leaves every request its own mark.
    let plain = StackConfig::default().retry_policy();
    assert_eq!(
        plain.safety_for(&head(Method::PATCH, "/api/v2/users/42")),
        None
    );
}

#[test]
fn the_classifier_follows_statuses_retry_500_and_gateway_ambiguity() {
    use genesys_tower::retry::{Classification, Classify};
    use http::StatusCode;
    let classify = |toml: &str, status: u16| {
        let config = StackConfig::from_toml(toml).unwrap();
        config.classifier().classify_response(
            &head(http::Method::POST, "/x"),
            StatusCode::from_u16(status).unwrap(),
            &http::HeaderMap::new(),
        )
    };
    let retried = |c: Classification| matches!(c, Classification::Retry(_));
    assert!(retried(classify("", 503)));
    assert!(!retried(classify("", 500)));
    assert!(retried(classify("[retry]\nretry_500 = true", 500)));
    assert!(retried(classify("[retry]\nstatuses = [429, 500]", 500)));
    assert!(!retried(classify("[retry]\nstatuses = [429, 500]", 503)));
    assert!(retried(classify("[retry]\nstatuses = [507]", 507)));
    assert!(!retried(classify("[retry]\nstatuses = [507]", 429)));
    assert_eq!(
        classify("[retry]\nambiguous_gateway_errors = true", 502),
        Classification::Ambiguous
    );
}

#[test]
fn the_idempotency_section_configures_the_layer() {
    let config = StackConfig::from_toml(
        "[idempotency]\nmethods = [\"POST\", \"PUT\"]\nretention = \"2h\"\nlock_ttl = \"30s\"",
    )
    .unwrap();
    let shown = format!("{:?}", config.idempotency_layer());
    assert!(shown.contains("[POST, PUT]"), "{shown}");
    assert!(shown.contains("retention: 7200s"), "{shown}");
    assert!(shown.contains("lock_ttl: 30s"), "{shown}");
    assert_eq!(config.idempotency.redis_url(), None);
    let redis = StackConfig::from_toml(
        "[idempotency]\nstore = \"redis://127.0.0.1:6379/2\"\nstore_password_env = \"REDIS_PW\"",
    )
    .unwrap();
    assert_eq!(
        redis.idempotency.redis_url(),
        Some("redis://127.0.0.1:6379/2")
    );
}

#[test]
fn lists_and_rules_come_from_the_environment_as_json() {
    let env = |name: &str| match name {
        "GCX_RETRY_STATUSES" => Some("[429, 503]".to_owned()),
        "GCX_RETRY_ROUTES" => Some(
            r#"[{"method": "POST", "route": "/api/v2/x/{id}", "safety": "idempotent"}]"#.to_owned(),
        ),
        "GCX_IDEMPOTENCY_METHODS" => Some(r#"["PATCH"]"#.to_owned()),
        "GCX_IDEMPOTENCY_STORE" => Some("redis://cache:6379".to_owned()),
        _ => None,
    };
    let layered = Layered::defaults()
        .env(env)
        .unwrap_or_else(|e| panic!("{e}"));
    let config = layered.config();
    assert_eq!(config.retry.statuses, [429, 503]);
    assert_eq!(config.retry.routes[0].safety, Safety::Idempotent);
    assert_eq!(config.idempotency.methods, ["PATCH"]);
    assert_eq!(config.idempotency.redis_url(), Some("redis://cache:6379"));
    assert_eq!(
        layered.origin("retry.routes"),
        Some(&Origin::Env("GCX_RETRY_ROUTES".into()))
    );
    let bad = |name: &str| (name == "GCX_RETRY_STATUSES").then(|| "[404]".to_owned());
    let err = Layered::defaults().env(bad).unwrap_err().to_string();
    assert!(
        err.contains("retry.statuses: 404 cannot be retried") && err.contains("GCX_RETRY_STATUSES"),
        "{err}"
    );
}

#[test]
fn a_test_profile_allows_short_delays() {
    assert!(
        problems("profile = \"test\"\n[retry]\nbase_delay = \"5ms\"\nmax_delay = \"10ms\"")
            .is_empty()
    );
    assert!(!problems("[retry]\nbase_delay = \"5ms\"\nmax_delay = \"10ms\"").is_empty());
}

#[test]
fn unknown_keys_and_bad_values_are_refused_with_their_name() {
    let found = problems("[retry]\nmax_atempts = 3");
    assert!(found[0].contains("max_atempts"), "{found:?}");
    let found = problems("[retry]\nbase_delay = \"soon\"");
    assert!(found[0].contains("\"soon\" is not a duration"), "{found:?}");
    let found = problems("[retry]\njitter = \"wild\"");
    assert!(found[0].contains("wild"), "{found:?}");
}

#[test]
fn json_is_read_too_and_gives_the_same_config() {
    let json = r#"{"retry": {"max_attempts": 6, "base_delay": "1s"}, "concurrency": {"limit": 4}}"#;
    let toml = "[retry]\nmax_attempts = 6\nbase_delay = \"1s\"\n[concurrency]\nlimit = 4";
    assert_eq!(
        StackConfig::from_json(json).unwrap(),
        StackConfig::from_toml(toml).unwrap()
    );
}

#[test]
fn the_documented_example_file_loads_and_builds_a_policy() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.example.toml");
    let config = StackConfig::from_path(&path).unwrap_or_else(|e| panic!("{e}"));
    let policy = config.retry_policy();
    assert_eq!(policy.max_attempts(), config.retry.max_attempts);
    assert_eq!(policy.version(), config.retry.version);
    assert_eq!(config.pacing_rate(), Some((300, Duration::from_secs(60))));
}

#[test]
fn a_file_that_is_too_large_or_missing_says_so() {
    let err = StackConfig::from_path(Path::new("/no/such/config.toml")).unwrap_err();
    assert!(err.to_string().contains("cannot be read"), "{err}");
}

/// The shipped schema is the one the types give. To update it after a change to the types:
/// `GENESYS_WRITE_SCHEMA=1 cargo test -p genesys-client --lib config`.
#[test]
fn the_shipped_json_schema_is_the_generated_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.schema.json");
    let generated = serde_json::to_string_pretty(&StackConfig::json_schema()).unwrap() + "\n";
    if std::env::var_os("GENESYS_WRITE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == generated,
        "docs/configuration.schema.json is not the schema of StackConfig: regenerate it with \
         GENESYS_WRITE_SCHEMA=1 cargo test -p genesys-client --lib config"
    );
    let schema = StackConfig::json_schema();
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown keys refused"
    );
    assert!(schema["$defs"]["RetryConfig"]["properties"]["max_attempts"].is_object());
}

/// An editor or CI job that checks files against the shipped schema agrees with the loader: the
/// example file passes, a misspelt key and a wrong type do not.
#[test]
fn the_example_file_validates_against_the_schema() {
    let schema = StackConfig::json_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.example.toml");
    let example: serde_json::Value =
        toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        validator.is_valid(&example),
        "{:?}",
        validator.iter_errors(&example).next()
    );
    for bad in [
        serde_json::json!({"retry": {"max_atempts": 3}}),
        serde_json::json!({"retry": {"max_attempts": "three"}}),
        serde_json::json!({"retry": {"base_delay": 500}}),
        serde_json::json!({"concurrency": {"when_full": "drop"}}),
    ] {
        assert!(!validator.is_valid(&bad), "{bad} passed the schema");
    }
}

#[test]
fn layers_take_precedence_default_file_env_flag_and_say_where_each_value_came_from() {
    let dir = std::env::temp_dir().join(format!("genesys-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stack.toml");
    std::fs::write(
        &file,
        "[retry]\nmax_attempts = 3\nbase_delay = \"200ms\"\n[concurrency]\nlimit = 4\n",
    )
    .unwrap();
    let env = |name: &str| match name {
        "GCX_RETRY_BASE_DELAY" => Some("300ms".to_owned()),
        "GCX_CONCURRENCY_LIMIT" => Some("6".to_owned()),
        _ => None,
    };
    let layered = Layered::file(&file)
        .unwrap()
        .env(env)
        .unwrap()
        .set(
            "concurrency.limit",
            serde_json::json!(12),
            Origin::Flag("--concurrency".into()),
        )
        .unwrap();
    let config = layered.config();
    assert_eq!(config.retry.max_attempts, 3, "from the file");
    assert_eq!(
        config.retry.base_delay.0,
        Duration::from_millis(300),
        "env over file"
    );
    assert_eq!(config.concurrency.limit, 12, "flag over env");
    assert_eq!(config.retry.factor, 2.0, "the default");
    let shown = file.display().to_string();
    assert_eq!(
        layered.origin("retry.max_attempts"),
        Some(&Origin::File(shown))
    );
    assert_eq!(
        layered.origin("retry.base_delay"),
        Some(&Origin::Env("GCX_RETRY_BASE_DELAY".into()))
    );
    assert_eq!(
        layered.origin("concurrency.limit"),
        Some(&Origin::Flag("--concurrency".into()))
    );
    assert_eq!(layered.origin("retry.factor"), Some(&Origin::Default));
    let entries = layered.entries();
    let (_, value, _) = entries
        .iter()
        .find(|(path, _, _)| path == "retry.base_delay")
        .unwrap();
    assert_eq!(value, &serde_json::json!("300ms"));
}

#[test]
fn a_bad_environment_value_names_its_variable_and_the_bound() {
    let env = |name: &str| match name {
        "GCX_RETRY_MAX_ATTEMPTS" => Some("40".to_owned()),
        "GCX_RETRY_JITTER" => Some("sometimes".to_owned()),
        _ => None,
    };
    let err = Layered::defaults().env(env).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("retry.max_attempts"), "{text}");
    assert!(text.contains("GCX_RETRY_MAX_ATTEMPTS=\"40\""), "{text}");
    assert!(text.contains("10"), "the bound, not a type error: {text}");
    assert!(!text.contains("invalid type"), "{text}");
    assert!(text.contains("GCX_RETRY_JITTER"), "{text}");
    assert_eq!(err.problems().len(), 2, "{text}");
}

#[test]
fn every_key_has_a_variable() {
    let layered = Layered::defaults();
    assert!(layered.is_default());
    for (path, _, _) in layered.entries() {
        let var = Layered::env_var(&path);
        assert!(var.starts_with("GCX_") && !var.contains('.'), "{var}");
    }
    assert_eq!(
        Layered::env_var("retry.max_attempts"),
        "GCX_RETRY_MAX_ATTEMPTS"
    );
}

#[test]
fn a_partial_tree_is_laid_over_the_layers_with_its_origin_and_paths() {
    let tree = serde_json::json!({"retry": {"max_attempts": 6}, "concurrency": {"limit": 3}});
    let layered = Layered::defaults()
        .apply(&tree, Origin::Profile("prod".into()), "profiles.prod")
        .unwrap();
    assert_eq!(layered.config().retry.max_attempts, 6);
    assert_eq!(
        layered.origin("retry.max_attempts"),
        Some(&Origin::Profile("prod".into()))
    );
    assert_eq!(layered.origin("retry.factor"), Some(&Origin::Default));
    let bad = serde_json::json!({"retry": {"max_atempts": 6, "factor": "x"}});
    let err = Layered::defaults()
        .apply(&bad, Origin::Profile("prod".into()), "profiles.prod")
        .unwrap_err();
    let paths: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "profiles.prod.retry.factor",
            "profiles.prod.retry.max_atempts"
        ]
    );
    // Bounds are checked on the settings together.
    let out = serde_json::json!({"retry": {"max_attempts": 60}});
    let err = Layered::defaults()
        .apply(&out, Origin::File("f.toml".into()), "")
        .unwrap_err();
    assert_eq!(err.problems()[0].path, "retry.max_attempts");
}

/// `GCX_PROFILE` is gcx's `--profile` (a profile of the file), not the `profile` key; the key
/// takes `"test"` or nothing.
#[test]
fn gcx_profile_is_not_the_profile_key_and_the_key_is_test_or_unset() {
    let env = |name: &str| (name == "GCX_PROFILE").then(|| "prod".to_owned());
    let layered = Layered::defaults().env(env).unwrap();
    assert_eq!(layered.config().profile, None);
    assert_eq!(layered.origin("profile"), Some(&Origin::Default));
    assert!(problems("profile = \"test\"").is_empty());
    let said = problems("profile = \"prod\"");
    assert!(
        said.len() == 1
            && said[0].starts_with("profile: \"prod\" is not a value")
            && said[0].contains("--profile"),
        "{said:?}"
    );
}
