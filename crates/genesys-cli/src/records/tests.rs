//! Tests of `records`.
use super::*;
use serde_json::json;

#[test]
fn user_updates() {
    let (u, key) = UserRecords
        .json_record(json!({"user_id": "u1", "updates": {"title": "Lead"}}))
        .unwrap();
    assert_eq!(u.user_id, "u1");
    assert_eq!(key.as_deref(), Some("u1"));
    assert_eq!(
        u.fields,
        json!({"title": "Lead"}).as_object().unwrap().clone()
    );
    assert!(
        UserRecords
            .json_record(json!({"id": "u1", "updates": {"title": "x"}}))
            .is_ok()
    );
    let err = UserRecords
        .json_record(json!({"updates": {"a": 1}}))
        .unwrap_err();
    assert!(err.contains("no user_id"), "{err}");
    let err = UserRecords
        .json_record(json!({"user_id": "u", "updates": {"version": 3}}))
        .unwrap_err();
    assert!(err.contains("version"), "{err}");
    let err = UserRecords.json_record(json!([1])).unwrap_err();
    assert!(err.contains("an array"), "{err}");
}

#[test]
fn user_csv_rows() {
    let mut row = Map::new();
    row.insert("user_id".into(), json!("u9"));
    row.insert("department".into(), json!("Sales"));
    let (u, _) = UserRecords.csv_record(row).unwrap();
    assert_eq!(
        u.fields,
        json!({"department": "Sales"}).as_object().unwrap().clone()
    );
}

#[test]
fn user_csv_cells_are_typed() {
    let mut row = Map::new();
    for (k, v) in [
        ("user_id", "u1"),
        ("acdAutoAnswer", "true"),
        ("priority", "3"),
        ("phone", "007"),
        ("title", "Lead"),
        ("code:string", "42"),
        ("addresses", r#"[{"type":"WORK","address":"a@b.c"}]"#),
        ("extra:json", r#"{"k": 1}"#),
    ] {
        row.insert(k.into(), json!(v));
    }
    let (u, _) = UserRecords.csv_record(row).unwrap();
    assert_eq!(
        Value::Object(u.fields),
        json!({
            "acdAutoAnswer": true,
            "priority": 3,
            "phone": "007",
            "title": "Lead",
            "code": "42",
            "addresses": [{"type":"WORK","address":"a@b.c"}],
            "extra": {"k": 1}
        })
    );
    let mut row = Map::new();
    row.insert("user_id".into(), json!("u1"));
    row.insert("addresses".into(), json!("[{broken"));
    let err = UserRecords.csv_record(row).unwrap_err();
    assert!(
        err.contains("column addresses") && err.contains("not JSON"),
        "{err}"
    );
}

#[test]
fn ingestion_schema() {
    let r = IngestRecords::new(json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["n"]
    }))
    .unwrap();
    assert!(r.json_record(json!({"n": 1})).is_ok());
    let err = r.json_record(json!({"n": "x"})).unwrap_err();
    assert!(err.starts_with("schema: /n:"), "{err}");
    let mut row = Map::new();
    row.insert("n".into(), json!("42"));
    row.insert("ok".into(), json!("true"));
    let (v, _) = r.csv_record(row).unwrap();
    assert_eq!(v, json!({"n": 42, "ok": true}));

    // The reason names the rule, not the value: a record refused as a whole is not quoted.
    let secret = "x".repeat(10_000);
    let err = r.json_record(json!([secret])).unwrap_err();
    assert!(err.contains("is not of type"), "{err}");
    assert!(
        !err.contains("xxxx"),
        "the record is quoted in its reason: {err}"
    );
    let mut row = Map::new();
    row.insert("n".into(), json!(secret));
    let err = r.csv_record(row).unwrap_err();
    assert!(
        err.len() < 200,
        "the cell is quoted whole: {} bytes",
        err.len()
    );

    let err = IngestRecords::new(json!({"type": "no-such-type"})).unwrap_err();
    assert!(!err.is_empty());
    assert!(IngestRecords::new(json!(3)).is_err());
}

/// How many random inputs each property tries (`GENESYS_FUZZ_CASES` for a longer run).
fn fuzz_cases(default: u32) -> u32 {
    std::env::var("GENESYS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(fuzz_cases(3000)))]

    /// Any line of a JSONL input, valid JSON or not, is a record or a reason; never a panic.
    #[test]
    fn any_line_is_a_record_or_a_reason(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
        let schema = IngestRecords::new(crate::records::tests_schema()).unwrap();
        for outcome in [
            crate::input::parse_json(&UserRecords, &line).map(drop),
            crate::input::parse_json(&ActionInputs, &line).map(drop),
            crate::input::parse_json(&schema, &line).map(drop),
        ] {
            if let Err(reason) = outcome {
                proptest::prop_assert!(!reason.is_empty());
            }
        }
    }

    /// JSON-shaped lines (objects with odd values) too.
    #[test]
    fn json_shaped_lines_are_records_or_reasons(
        id in proptest::option::of("\\PC{0,12}"),
        key in "\\PC{0,12}",
        value in proptest::prelude::any::<f64>(),
        flag in proptest::prelude::any::<bool>(),
    ) {
        let line = serde_json::json!({"user_id": id, "updates": {key.clone(): value, "b": flag}}).to_string();
        if let Err(reason) = crate::input::parse_json(&UserRecords, line.as_bytes()) {
            proptest::prop_assert!(!reason.is_empty());
        }
        let line = serde_json::json!({"external_id": id, "duration_seconds": value, key: flag}).to_string();
        let schema = IngestRecords::new(crate::records::tests_schema()).unwrap();
        if let Err(reason) = crate::input::parse_json(&schema, line.as_bytes()) {
            proptest::prop_assert!(!reason.is_empty());
        }
    }

    /// Any CSV cell under any column name is typed or refused with a reason.
    #[test]
    fn any_csv_cell_is_typed_or_refused(column in "\\PC{0,16}", cell in "\\PC{0,40}") {
        let mut row = Map::new();
        row.insert("user_id".into(), json!("u1"));
        row.insert(column, json!(cell));
        if let Err(reason) = UserRecords.csv_record(row) {
            proptest::prop_assert!(!reason.is_empty());
        }
    }
}

/// A schema file is read up to a bound: a wrong path to a huge file, or to a device that never
/// ends, is refused without reading it whole.
#[test]
fn a_schema_past_its_bound_is_refused_unread() {
    let dir = std::env::temp_dir().join(format!("gcx-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.json");
    std::fs::write(&big, vec![b' '; SCHEMA_MAX + 1]).unwrap();
    for path in [big.as_path(), std::path::Path::new("/dev/zero")] {
        let e = IngestRecords::load(path).unwrap_err().to_string();
        assert!(e.contains("larger than 4 MiB"), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
