//! `gcx policy apply | promote | rollback | status | history | diff | audit verify`: versions
//! of the stack's configuration in the policy store, each change in the audit log.

use genesys_client::config::{Layered, Origin};
use serde_json::{Value, json};

use crate::cli::{AuditCommand, Common, PolicyApplyArgs, PolicyChangeArgs, PolicyCommand};
use crate::error::{CliError, EXIT_INCOMPLETE, EXIT_OK};
use crate::store::audit::Entry;
use crate::store::{self, Canary, Store, store_dir};

fn open(common: &Common) -> Result<Store, CliError> {
    let dir = store_dir(common, |name| std::env::var(name).ok()).ok_or_else(|| {
        CliError::usage("no policy store: give --policy-store DIR (or set GCX_POLICY_STORE)")
    })?;
    Store::open(&dir)
}

fn actor(change: &PolicyChangeArgs) -> String {
    change
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|a| !a.trim().is_empty())
        // `--actor` is bounded where it is parsed; the OS user's name, here.
        .map(|a| a.chars().take(crate::cli::ACTOR_MAX).collect())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Checks that `tree` is a valid configuration on its own: every key known, every bound kept.
fn validated(tree: &Value, shown: &str) -> Result<Layered, CliError> {
    Layered::defaults()
        .apply(tree, Origin::File(shown.to_owned()), "")
        .map_err(|e| CliError::usage(format!("{shown} is not a valid configuration:\n{e}")))
}

/// Runs a `gcx policy` command other than `check`.
pub(crate) fn run(command: &PolicyCommand, common: &Common) -> Result<u8, CliError> {
    if let PolicyCommand::Promote(change) | PolicyCommand::Rollback(change) = command
        && change
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > REASON_MAX)
    {
        return Err(CliError::usage(format!(
            "--reason: at most {REASON_MAX} characters"
        )));
    }
    match command {
        PolicyCommand::Check(_) => Ok(EXIT_OK),
        PolicyCommand::Apply(args) => apply(args, common),
        PolicyCommand::Promote(change) => promote(change, common),
        PolicyCommand::Rollback(change) => rollback(change, &actor(change), common),
        PolicyCommand::Status => status(common),
        PolicyCommand::History => history(common),
        PolicyCommand::Diff { a, b } => diff(a, b, common),
        PolicyCommand::Audit(AuditCommand::Verify) => verify(common),
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The longest `--reason`, in characters.
const REASON_MAX: usize = 1000;

fn apply(args: &PolicyApplyArgs, common: &Common) -> Result<u8, CliError> {
    let tree = crate::settings::read_tree(&args.file)?;
    if tree.get("profiles").is_some() {
        return Err(CliError::usage(format!(
            "{}: a policy holds the stack's settings, not profiles: apply a file without \
             [profiles]",
            args.file.display()
        )));
    }
    let shown = args.file.display().to_string();
    validated(&tree, &shown)?;
    if args
        .change
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > REASON_MAX)
    {
        return Err(CliError::usage(format!(
            "--reason: at most {REASON_MAX} characters"
        )));
    }
    if args.canary.is_some()
        && let Some(other) = tree
            .as_object()
            .and_then(|m| m.keys().find(|k| *k != "retry"))
    {
        return Err(CliError::usage(format!(
            "{shown}: a canary tries a retry policy, and sets [retry] only (this file sets \
             [{other}]): apply the other settings as a stable version"
        )));
    }
    let store = open(common)?;
    let mut writer = store.writer()?;
    if args.canary.is_some()
        && let Some(stable) = writer.state.stable.clone()
    {
        // The canary is laid over the stable version: the two must fit together.
        let (_, base) = store.version(&stable)?;
        validated(&base, "the stable version")?
            .apply(&tree, Origin::File(shown.clone()), "")
            .map_err(|e| {
                CliError::usage(format!(
                    "{shown} over the stable version is not a valid configuration:\n{e}"
                ))
            })?;
    }
    let id = store.put_version(&tree)?;
    let state = &mut writer.state;
    if let Some(c) = &state.canary {
        return Err(CliError::usage(format!(
            "a canary ({}) is running: `gcx policy promote` or `gcx policy rollback` it first",
            short(&c.version)
        )));
    }
    let mut entry = store::entry(&actor(&args.change), "apply");
    entry.reason.clone_from(&args.change.reason);
    entry.version = Some(id.clone());
    entry.from.clone_from(&state.stable);
    match args.canary {
        Some(share) => {
            let Some(stable) = &state.stable else {
                return Err(CliError::usage(
                    "no stable version to compare a canary with: apply a first version without \
                     --canary",
                ));
            };
            if *stable == id {
                out!(
                    "{} is already the stable version: nothing to do",
                    short(&id)
                );
                return Ok(EXIT_OK);
            }
            state.canary = Some(Canary {
                version: id.clone(),
                share,
                rollback_below: args.rollback_below,
                promote_after: args.promote_after,
                max_added_latency_ms: args
                    .max_added_latency
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                since: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            });
            entry.action = "canary".into();
            entry.share = Some(format!("{share:.4}"));
            entry.rollback_below = Some(format!("{:.4}", args.rollback_below));
        }
        None => {
            if state.stable.as_deref() == Some(id.as_str()) {
                out!(
                    "{} is already the stable version: nothing to do",
                    short(&id)
                );
                return Ok(EXIT_OK);
            }
            if let Some(before) = state.stable.replace(id.clone()) {
                state.history.push(before);
            }
        }
    }
    let entry = writer.commit(entry)?;
    match args.canary {
        Some(share) => out!(
            "{} runs as a canary on {:.1} % of the calls; rolled back automatically below \
             {:.2} of the stable version's success rate (audit entry {})",
            short(&id),
            share * 100.0,
            args.rollback_below,
            entry.seq
        ),
        None => out!(
            "{} is the stable version (audit entry {})",
            short(&id),
            entry.seq
        ),
    }
    Ok(EXIT_OK)
}

fn promote(change: &PolicyChangeArgs, common: &Common) -> Result<u8, CliError> {
    let store = open(common)?;
    let mut writer = store.writer()?;
    let state = &mut writer.state;
    let Some(canary) = state.canary.take() else {
        return Err(CliError::usage("there is no canary to promote"));
    };
    let mut entry = store::entry(&actor(change), "promote");
    entry.reason.clone_from(&change.reason);
    entry.version = Some(canary.version.clone());
    entry.from.clone_from(&state.stable);
    if let Some(before) = state.stable.replace(canary.version.clone()) {
        state.history.push(before);
    }
    writer.commit(entry)?;
    out!("{} is the stable version", short(&canary.version));
    Ok(EXIT_OK)
}

/// Drops the canary, or returns to the stable version before; `actor` is who does it (a user,
/// or gcx itself for an automatic rollback).
pub(crate) fn rollback(
    change: &PolicyChangeArgs,
    actor: &str,
    common: &Common,
) -> Result<u8, CliError> {
    let store = open(common)?;
    let mut writer = store.writer()?;
    let state = &mut writer.state;
    let mut entry = store::entry(actor, "rollback");
    entry.reason.clone_from(&change.reason);
    let message = if let Some(canary) = state.canary.take() {
        entry.from = Some(canary.version.clone());
        entry.version.clone_from(&state.stable);
        format!(
            "the canary {} is rolled back: every call runs the stable version {}",
            short(&canary.version),
            state.stable.as_deref().map_or("", short)
        )
    } else {
        let Some(before) = state.history.pop() else {
            return Err(CliError::usage(
                "nothing to roll back: no canary, and no stable version before this one",
            ));
        };
        entry.from = state.stable.replace(before.clone());
        entry.version = Some(before.clone());
        format!("{} is the stable version again", short(&before))
    };
    writer.commit(entry)?;
    out!("{message}");
    Ok(EXIT_OK)
}

/// What a job decided about the canary `canary`: promote it, or roll it back; done only when it
/// is still the store's canary (another job, or a person, may have acted first). True when
/// this call changed the store.
pub(crate) fn decide_canary(
    common: &Common,
    canary: &str,
    promote: bool,
    reason: &str,
) -> Result<bool, CliError> {
    let store = open(common)?;
    let mut writer = store.writer()?;
    let state = &mut writer.state;
    if state.canary.as_ref().map(|c| c.version.as_str()) != Some(canary) {
        return Ok(false);
    }
    let mut entry = store::entry(AUTOMATIC, if promote { "promote" } else { "rollback" });
    entry.reason = Some(reason.to_owned());
    state.canary = None;
    if promote {
        entry.version = Some(canary.to_owned());
        entry.from.clone_from(&state.stable);
        if let Some(before) = state.stable.replace(canary.to_owned()) {
            state.history.push(before);
        }
    } else {
        entry.from = Some(canary.to_owned());
        entry.version.clone_from(&state.stable);
    }
    writer.commit(entry)?;
    Ok(true)
}

/// The actor of automatic decisions, in the audit log.
pub(crate) const AUTOMATIC: &str = "gcx (automatic)";

fn status(common: &Common) -> Result<u8, CliError> {
    let store = open(common)?;
    let state = store.state()?;
    if common.json {
        out!(
            "{}",
            json!({"store": store.shown(), "stable": state.stable, "canary": state.canary,
                   "history": state.history})
        );
        return Ok(EXIT_OK);
    }
    out!("store   {}", store.shown());
    out!(
        "stable  {}",
        state
            .stable
            .as_deref()
            .unwrap_or("(none: gcx policy apply FILE)")
    );
    match &state.canary {
        Some(c) => out!(
            "canary  {} on {:.1} % of the calls, rolled back below {:.2} of the stable's \
             success rate",
            c.version,
            c.share * 100.0,
            c.rollback_below
        ),
        None => out!("canary  (none)"),
    }
    Ok(EXIT_OK)
}

fn history(common: &Common) -> Result<u8, CliError> {
    let store = open(common)?;
    let entries = store.audit().map_err(|e| {
        CliError::usage(format!(
            "the audit log of {} is damaged: {e}; `gcx policy audit verify` says where",
            store.shown()
        ))
    })?;
    if common.json {
        out!("{}", serde_json::to_string(&entries).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    for e in &entries {
        out!("{}", line(e));
    }
    if entries.is_empty() {
        out!("(no change yet)");
    }
    Ok(EXIT_OK)
}

fn line(e: &Entry) -> String {
    let mut s = format!("#{} at {} by {}: {}", e.seq, e.at, e.actor, e.action);
    if let Some(v) = &e.version {
        s.push_str(&format!(" {}", short(v)));
    }
    if let Some(f) = &e.from {
        s.push_str(&format!(" (from {})", short(f)));
    }
    if let Some(share) = &e.share {
        s.push_str(&format!(" on a share of {share}"));
    }
    if let Some(r) = &e.reason {
        s.push_str(&format!(": {r}"));
    }
    s
}

fn diff(a: &str, b: &str, common: &Common) -> Result<u8, CliError> {
    let store = open(common)?;
    let (ia, ta) = store.version(a)?;
    let (ib, tb) = store.version(b)?;
    let la = validated(&ta, a)?;
    let lb = validated(&tb, b)?;
    let before: std::collections::BTreeMap<String, Value> =
        la.entries().into_iter().map(|(k, v, _)| (k, v)).collect();
    let mut changed = 0;
    out!("{} -> {}", short(&ia), short(&ib));
    for (key, value, _) in lb.entries() {
        let old = before.get(&key).cloned().unwrap_or(Value::Null);
        if old != value {
            changed += 1;
            out!("  {key}: {old} -> {value}");
        }
    }
    if changed == 0 {
        out!("  (the same settings)");
    }
    Ok(EXIT_OK)
}

fn verify(common: &Common) -> Result<u8, CliError> {
    let store = open(common)?;
    match store.audit() {
        Ok(entries) => {
            out!(
                "the audit log of {} is intact: {} entries",
                store.shown(),
                entries.len()
            );
            Ok(EXIT_OK)
        }
        Err(e) => {
            say!("gcx: the audit log of {} is not intact: {e}", store.shown());
            Ok(EXIT_INCOMPLETE)
        }
    }
}
