//! What a valid record is for each job: a user update, an ingestion record checked against the
//! user's JSON Schema, a data action input.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::CliError;
use crate::input::Parse;

/// One user update: the user and the fields to set (the version is added by the client).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UserUpdate {
    pub(crate) user_id: String,
    pub(crate) fields: Map<String, Value>,
}

/// Seed 001's shape: `{"user_id": "...", "updates": {...}}` (`id` accepted for `user_id`); in CSV,
/// a `user_id` column and one column per field.
#[derive(Debug, Default)]
pub(crate) struct UserRecords;

fn user_id(obj: &Map<String, Value>) -> Result<String, String> {
    let id = obj.get("user_id").or_else(|| obj.get("id"));
    match id {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(Value::String(_)) => Err("user_id is empty".into()),
        Some(other) => Err(format!("user_id must be a string, found {}", kind(other))),
        None => Err("no user_id (or id) field".into()),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_fields(fields: &Map<String, Value>) -> Result<(), String> {
    if fields.is_empty() {
        return Err("updates is empty: nothing to change".into());
    }
    // The version is read from the user right before the PATCH; a stale one from a file would
    // only cause conflicts.
    for forbidden in ["id", "version", "selfUri"] {
        if fields.contains_key(forbidden) {
            return Err(format!(
                "updates must not set `{forbidden}`: gcx reads the user's current version itself"
            ));
        }
    }
    Ok(())
}

impl Parse for UserRecords {
    type Item = UserUpdate;

    fn required_columns(&self) -> &[&'static str] {
        &["user_id"]
    }

    fn json_record(&self, value: Value) -> Result<(UserUpdate, Option<String>), String> {
        let Value::Object(mut obj) = value else {
            return Err(format!(
                "expected an object like {{\"user_id\": \"...\", \"updates\": {{...}}}}, found {}",
                kind(&value)
            ));
        };
        let user_id = user_id(&obj)?;
        let fields = match obj.remove("updates") {
            Some(Value::Object(fields)) => fields,
            Some(other) => {
                return Err(format!("updates must be an object, found {}", kind(&other)));
            }
            None => return Err("no updates object".into()),
        };
        check_fields(&fields)?;
        Ok((
            UserUpdate {
                user_id: user_id.clone(),
                fields,
            },
            Some(user_id),
        ))
    }

    fn csv_record(&self, row: Map<String, Value>) -> Result<(UserUpdate, Option<String>), String> {
        let user_id = user_id(&row)?;
        let mut fields = Map::new();
        for (column, cell) in row {
            if column == "user_id" {
                continue;
            }
            let (name, value) = typed_cell(&column, cell.as_str().unwrap_or_default())?;
            fields.insert(name, value);
        }
        let row = fields;
        check_fields(&row)?;
        Ok((
            UserUpdate {
                user_id: user_id.clone(),
                fields: row,
            },
            Some(user_id),
        ))
    }
}

/// A CSV cell of a user update, typed: `true`/`false` are booleans, a JSON number is a number
/// (`42`, `-1.5`; `007` is not one, so it stays text), a cell starting with `{` or `[` is JSON;
/// anything else is text. A column named `name:string` keeps its cells as text, and
/// `name:json` requires JSON.
fn typed_cell(column: &str, text: &str) -> Result<(String, Value), String> {
    let json = |name: &str| {
        serde_json::from_str::<Value>(text.trim())
            .map_err(|e| format!("column {column}: `{}` is not JSON ({e})", cut(text)))
            .map(|v| (name.to_owned(), v))
    };
    if let Some(name) = column.strip_suffix(":string") {
        return Ok((name.to_owned(), Value::String(text.to_owned())));
    }
    if let Some(name) = column.strip_suffix(":json") {
        return json(name);
    }
    let trimmed = text.trim();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return json(column);
    }
    let value = match trimmed {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => match serde_json::from_str::<serde_json::Number>(trimmed) {
            Ok(n) if !trimmed.is_empty() => Value::Number(n),
            _ => Value::String(text.to_owned()),
        },
    };
    Ok((column.to_owned(), value))
}

/// At most 60 characters of `s`, for an error message.
fn cut(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// The largest schema file read (a schema is a few kilobytes; a larger file is a wrong path).
const SCHEMA_MAX: usize = 4 << 20;

/// Ingestion records: any JSON value the schema accepts. CSV cells are converted to the type the
/// schema gives their column (`integer`, `number`, `boolean`), so a CSV can satisfy a typed schema.
#[derive(Debug)]
pub(crate) struct IngestRecords {
    schema: Value,
    validator: jsonschema::Validator,
}

impl IngestRecords {
    /// Loads and checks the schema: refused (exit 2) when it is missing, not JSON, or not a valid
    /// JSON Schema.
    pub(crate) fn load(path: &Path) -> Result<Self, CliError> {
        let cannot = |e: &dyn std::fmt::Display| {
            CliError::usage(format!(
                "cannot read the schema {}: {e}; check the path given to --schema",
                path.display()
            ))
        };
        let file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
        let mut text = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, SCHEMA_MAX as u64 + 1),
            &mut text,
        )
        .map_err(|e| cannot(&e))?;
        if text.len() > SCHEMA_MAX {
            return Err(cannot(&format_args!(
                "it is larger than {} MiB, more than any schema needs",
                SCHEMA_MAX >> 20
            )));
        }
        let schema: Value = serde_json::from_slice(&text).map_err(|e| {
            CliError::usage(format!(
                "the schema {} is not JSON ({e}); --schema takes a JSON Schema document",
                path.display()
            ))
        })?;
        Self::new(schema).map_err(|e| {
            CliError::usage(format!(
                "the schema {} is not a valid JSON Schema: {e}; fix it (a validator such as `check-jsonschema` shows where)",
                path.display()
            ))
        })
    }

    /// Records checked against `schema`.
    pub(crate) fn new(schema: Value) -> Result<Self, String> {
        if !(schema.is_object() || schema.is_boolean()) {
            return Err(format!(
                "a schema is an object or a boolean, found {}",
                kind(&schema)
            ));
        }
        jsonschema::meta::validate(&schema).map_err(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("at {at}: {e}")
            }
        })?;
        let validator = jsonschema::validator_for(&schema).map_err(|e| e.to_string())?;
        Ok(IngestRecords { schema, validator })
    }

    /// A stable hash of the schema's content (whitespace aside): part of what a job is, since
    /// it decides which records form each chunk.
    pub(crate) fn schema_hash(&self) -> String {
        let text = serde_json::to_string(&self.schema).unwrap_or_default();
        format!("fnv1a64:{:016x}", crate::journal::fnv1a(text.as_bytes()))
    }

    fn column_type(&self, column: &str) -> Option<&str> {
        self.schema
            .get("properties")?
            .get(column)?
            .get("type")?
            .as_str()
    }
}

impl Parse for IngestRecords {
    type Item = Value;

    fn json_record(&self, value: Value) -> Result<(Value, Option<String>), String> {
        let errors: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(3)
            .map(|e| {
                // Masked: the rule and the path, not the value, which can be the whole record.
                let at = e.instance_path().to_string();
                let e = e.masked();
                if at.is_empty() {
                    format!("schema: {e}")
                } else {
                    format!("schema: {at}: {e}")
                }
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let key = ["external_id", "id"]
            .iter()
            .find_map(|k| value.get(k).and_then(Value::as_str))
            .map(str::to_owned);
        Ok((value, key))
    }

    fn csv_record(&self, row: Map<String, Value>) -> Result<(Value, Option<String>), String> {
        let mut out = Map::new();
        for (column, cell) in row {
            let text = cell.as_str().unwrap_or_default();
            let typed = match self.column_type(&column) {
                Some("integer") => {
                    text.trim().parse::<i64>().map(Value::from).map_err(|_| {
                        format!("column {column}: `{}` is not an integer", cut(text))
                    })?
                }
                Some("number") => text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| format!("column {column}: `{}` is not a number", cut(text)))?,
                Some("boolean") => match text.trim() {
                    "true" | "TRUE" | "True" => Value::Bool(true),
                    "false" | "FALSE" | "False" => Value::Bool(false),
                    _ => {
                        return Err(format!(
                            "column {column}: `{}` is not true or false",
                            cut(text)
                        ));
                    }
                },
                _ => cell,
            };
            out.insert(column, typed);
        }
        self.json_record(Value::Object(out))
    }
}

/// Data action inputs: one JSON object each.
#[derive(Debug, Default)]
pub(crate) struct ActionInputs;

impl Parse for ActionInputs {
    type Item = Value;

    fn json_record(&self, value: Value) -> Result<(Value, Option<String>), String> {
        if !value.is_object() {
            return Err(format!(
                "a data action input is a JSON object, found {}",
                kind(&value)
            ));
        }
        Ok((value, None))
    }
}

/// The schema the tests validate ingestion records against.
#[cfg(test)]
pub(crate) fn tests_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "properties": {"external_id": {"type": "string"}, "duration_seconds": {"type": "integer"}},
        "required": ["external_id"]
    })
}

#[cfg(test)]
mod tests;
