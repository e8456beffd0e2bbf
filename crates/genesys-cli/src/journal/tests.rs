//! Tests of `journal`.
use super::*;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gcx-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn spec(input: &Path) -> JobSpec {
    JobSpec::new("users patch", input, None, 1).unwrap()
}

#[tokio::test]
async fn states_survive_a_reopen_and_the_last_entry_wins() {
    let input = temp("in1.jsonl");
    std::fs::write(&input, "a\nb\nc\nd\n").unwrap();
    let path = temp("j1.journal");
    let j = Journal::open(&path, &spec(&input), OpenMode::Fresh).unwrap();
    let h = j.handle();
    h.start(1, 1, &j.key(1));
    h.done(1);
    h.start(2, 1, &j.key(2));
    h.start(3, 1, &j.key(3));
    h.unknown(3, "reset");
    h.start(4, 1, &j.key(4));
    h.failed(4, "404");
    h.sync().await.unwrap();
    let key1 = j.key(1);
    drop(h);
    // Killed: no end entry.
    drop(j);
    let j = Journal::open(&path, &spec(&input), OpenMode::Resume).unwrap();
    assert_eq!(j.key(1), key1, "the same keys in a resumed run");
    assert!(j.past.resumed());
    assert_eq!(j.past.last_end, None);
    assert_eq!(j.past.state(1), UnitState::Done);
    assert_eq!(j.past.state(2), UnitState::Started);
    assert_eq!(j.past.state(3), UnitState::Unknown);
    assert_eq!(j.past.state(4), UnitState::Failed);
    assert_eq!(j.past.state(5), UnitState::New);
    j.close("complete").await.unwrap();
    // A completed default journal starts over; an explicit one is resumed.
    let j = Journal::open(&path, &spec(&input), OpenMode::ResumeUnfinished).unwrap();
    assert!(!j.past.resumed());
    assert_eq!(j.past.state(1), UnitState::New);
    assert_ne!(j.key(1), key1, "a new job");
}

#[tokio::test]
async fn a_torn_last_line_is_cut_off_and_damage_elsewhere_refused() {
    let input = temp("in2.jsonl");
    std::fs::write(&input, "a\nb\n").unwrap();
    let path = temp("j2.journal");
    let j = Journal::open(&path, &spec(&input), OpenMode::Fresh).unwrap();
    j.handle().done(1);
    j.close("interrupted").await.unwrap();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"u\":2,\"s\":\"do").unwrap();
    drop(f);
    let j = Journal::open(&path, &spec(&input), OpenMode::Resume).unwrap();
    assert_eq!(j.past.state(1), UnitState::Done);
    assert_eq!(j.past.state(2), UnitState::New);
    j.handle().done(2);
    j.close("complete").await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{text}"
    );

    let text = text.replacen("{\"u\":1,\"s\":\"done\"}", "{\"u\":1,\"s\":", 1);
    std::fs::write(&path, text).unwrap();
    let err = Journal::open(&path, &spec(&input), OpenMode::Resume).unwrap_err();
    assert!(err.to_string().contains("damaged at line"), "{err}");
}

#[tokio::test]
async fn another_job_is_refused_with_what_differs() {
    let input = temp("in3.jsonl");
    std::fs::write(&input, "a\n").unwrap();
    let path = temp("j3.journal");
    Journal::open(&path, &spec(&input), OpenMode::Fresh)
        .unwrap()
        .close("incomplete")
        .await
        .unwrap();
    std::fs::write(&input, "a\nb\n").unwrap();
    let other = JobSpec::new("ingest", &input, None, 500)
        .unwrap()
        .with_schema(Some("fnv1a64:0123".into()));
    let err = Journal::open(&path, &other, OpenMode::Resume).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.code(), 2);
    for what in [
        "the command",
        "the input's content",
        "--chunk-size",
        "the schema's content",
        "--fresh",
    ] {
        assert!(msg.contains(what), "{what}: {msg}");
    }
}

/// A shard's journal made when `--shard` split `users patch` by line is refused by a run that
/// splits it by user id: the two workers' shares differ, and a resume would leave lines unsent.
#[tokio::test]
async fn a_shard_split_by_line_is_not_resumed_as_one_split_by_user() {
    let input = temp("in-shard.jsonl");
    std::fs::write(&input, "a\n").unwrap();
    let path = temp("j-shard.journal");
    let shard = Some(Shard { index: 1, count: 4 });
    let by_line = spec(&input).with_shard(shard);
    Journal::open(&path, &by_line, OpenMode::Fresh)
        .unwrap()
        .close("incomplete")
        .await
        .unwrap();
    let by_user = spec(&input)
        .with_shard(shard)
        .with_shard_by(Some("user id"));
    let err = Journal::open(&path, &by_user, OpenMode::Resume).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("--shard (journal: 1/4, now: 1/4 by user id)"),
        "{msg}"
    );
    assert_ne!(by_line.fleet_identity(), by_user.fleet_identity());
    // Where a fleet job of an earlier gcx would be found, to refuse it.
    assert_eq!(
        by_user.fleet_identity_by_line(),
        Some(by_line.fleet_identity())
    );
    assert_eq!(by_line.fleet_identity_by_line(), None);
    // And the shard's default journal is the same file, so that its header refuses it.
    assert_eq!(
        default_path(&by_line).unwrap(),
        default_path(&by_user).unwrap()
    );
}

#[test]
fn an_entry_past_the_input_is_damage() {
    let mut past = Past::default();
    assert!(past.set(0, UnitState::Done, 10).is_err());
    assert!(past.set(11, UnitState::Done, 10).is_err());
    past.set(10, UnitState::Done, 10).unwrap();
    assert_eq!(past.state(10), UnitState::Done);
}

#[test]
fn the_fleets_states_overlay_the_local_ones_the_more_cautious_winning() {
    let mut past = Past::default();
    let max = 10;
    past.set(1, UnitState::Failed, max).unwrap();
    past.set(2, UnitState::Done, max).unwrap();
    past.done_units = 1;
    past.set(3, UnitState::Started, max).unwrap();
    // Another worker started line 1 after this one failed it: it may be applied.
    past.overlay(1, UnitState::Started.code(), max);
    // Delivered here stays delivered.
    past.overlay(2, UnitState::Failed.code(), max);
    // Delivered by the fleet wins over started here.
    past.overlay(3, UnitState::Done.code(), max);
    // Unknown here, nothing there: taken from the fleet.
    past.overlay(4, UnitState::Unknown.code(), max);
    // A line outside the input is ignored.
    past.overlay(99, UnitState::Done.code(), max);
    assert_eq!(past.state(1), UnitState::Started);
    assert_eq!(past.state(2), UnitState::Done);
    assert_eq!(past.state(3), UnitState::Done);
    assert_eq!(past.state(4), UnitState::Unknown);
    assert_eq!(past.state(99), UnitState::New);
    assert_eq!(past.done_units, 2);
    // Started again by a later run there: its generation is kept, though delivered here wins;
    // an earlier generation there changes nothing.
    past.overlay(2, Past::fleet_code(UnitState::Started, 3), max);
    assert_eq!(past.state(2), UnitState::Done);
    assert_eq!(past.generation(2), 3);
    past.overlay(2, Past::fleet_code(UnitState::Done, 2), max);
    assert_eq!(past.generation(2), 3);
    assert_eq!(past.done_units, 2);
    assert_eq!(past.max_generation(), 3);
}

/// Each run marks what it starts with its generation: its number in the journal, or what a
/// `gen` entry says (a fleet worker's run on a shard others worked on).
#[tokio::test]
async fn each_run_marks_what_it_starts_with_its_generation() {
    let input = temp("in-gen.jsonl");
    std::fs::write(&input, "a\nb\nc\n").unwrap();
    let path = temp("j-gen.journal");
    let j = Journal::open(&path, &spec(&input), OpenMode::Fresh).unwrap();
    let h = j.handle();
    h.start(1, 1, &j.key(1));
    h.done(1);
    let mut entry = EntryOut::new(None, "gen");
    entry.g = Some(4);
    h.send(&entry);
    h.start(2, 1, &j.key(2));
    h.done(2);
    h.sync().await.unwrap();
    drop(h);
    j.close("incomplete").await.unwrap();
    let j = Journal::open(&path, &spec(&input), OpenMode::Resume).unwrap();
    assert_eq!(j.past.state(1), UnitState::Done);
    assert_eq!(
        j.past.generation(1),
        1,
        "started before the run said its generation"
    );
    assert_eq!(
        (j.past.state(2), j.past.generation(2)),
        (UnitState::Done, 4)
    );
    assert_eq!(j.past.generation(3), 0);
    // The journal's second run.
    let h = j.handle();
    h.start(3, 1, &j.key(3));
    h.sync().await.unwrap();
    drop(h);
    j.close("incomplete").await.unwrap();
    let j = Journal::open(&path, &spec(&input), OpenMode::Resume).unwrap();
    assert_eq!(
        (j.past.state(3), j.past.generation(3)),
        (UnitState::Started, 2)
    );
    j.close("incomplete").await.unwrap();
}

#[tokio::test]
async fn a_journal_in_use_by_another_run_is_refused() {
    let input = temp("in_lock.jsonl");
    std::fs::write(&input, "a\n").unwrap();
    let path = temp("lock.journal");
    let first = Journal::open(&path, &spec(&input), OpenMode::Fresh).unwrap();
    for mode in [OpenMode::Resume, OpenMode::Fresh] {
        let err = Journal::open(&path, &spec(&input), mode).unwrap_err();
        assert!(
            err.to_string().contains("in use by another gcx run"),
            "{err}"
        );
    }
    first.close("interrupted").await.unwrap();
    // Free again once the first run closed it, and what it wrote is still there.
    let again = Journal::open(&path, &spec(&input), OpenMode::Resume).unwrap();
    assert!(again.past.resumed());
    again.close("complete").await.unwrap();
}

/// A run that died while it wrote the header (an empty file, or part of its first line) sent
/// nothing: the journal is taken as new, not refused as damaged.
#[tokio::test]
async fn a_journal_cut_before_its_header_was_written_is_new() {
    let input = temp("in-cut.jsonl");
    std::fs::write(&input, "a\nb\n").unwrap();
    for (name, content) in [
        ("cut-empty.journal", &b""[..]),
        ("cut-torn.journal", &b"{\"journal\":\"gcx-jour"[..]),
    ] {
        let path = temp(name);
        std::fs::write(&path, content).unwrap();
        let j = Journal::open(&path, &spec(&input), OpenMode::Resume).unwrap();
        assert!(!j.past.resumed(), "{name}: nothing to resume");
        assert_eq!(j.past.state(1), UnitState::New, "{name}");
    }
    // A journal with a whole damaged line is still refused.
    let path = temp("cut-damaged.journal");
    std::fs::write(&path, b"not a header\n").unwrap();
    assert!(Journal::open(&path, &spec(&input), OpenMode::Resume).is_err());
}

/// A journal that holds a job's progress and cannot be written is never answered with "choose
/// another path": a journal elsewhere starts the job over and sends every record again.
#[test]
fn a_journal_that_cannot_be_written_on_a_resume_is_not_replaced() {
    let e = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
    let resuming = cannot(Path::new("j.journal"), &e, true).to_string();
    assert!(!resuming.contains("choose a writable path"), "{resuming}");
    assert!(
        resuming.contains("run the same command again"),
        "{resuming}"
    );
    assert!(resuming.contains("copy it"), "{resuming}");
    let new = cannot(Path::new("j.journal"), &e, false).to_string();
    assert!(
        new.contains("choose a writable path with --journal FILE"),
        "{new}"
    );
}

/// Two inputs whose names differ only in bytes that are not UTF-8 are two jobs, with a journal
/// each: shown alike, they shared one, and the second was refused as the first's (or, with
/// --fresh, wiped the first's progress).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn inputs_whose_names_are_not_utf8_have_a_journal_each() {
    use std::os::unix::ffi::OsStrExt;
    let dir = temp("not-utf8");
    std::fs::create_dir_all(&dir).unwrap();
    let [a, b] =
        [b"a\xff.jsonl", b"a\xfe.jsonl"].map(|name| dir.join(std::ffi::OsStr::from_bytes(name)));
    std::fs::write(&a, "a\n").unwrap();
    std::fs::write(&b, "b\n").unwrap();
    let (own_a, own_b) = (
        default_path(&spec(&a)).unwrap(),
        default_path(&spec(&b)).unwrap(),
    );
    assert_ne!(own_a, own_b);
    // The name an earlier gcx gave both (by the shown path alone): a job it left unfinished is
    // still found there, rather than started over under new keys.
    let earlier = |input: &Path| {
        let canonical = std::fs::canonicalize(input).unwrap();
        let identity = format!("users patch|{}|", canonical.display());
        own_a.with_file_name(format!(
            "users-patch-a_-{:016x}.journal",
            fnv1a(identity.as_bytes())
        ))
    };
    assert_eq!(earlier(&a), earlier(&b));
    Journal::open(&earlier(&a), &spec(&a), OpenMode::Fresh)
        .unwrap()
        .close("incomplete")
        .await
        .unwrap();
    assert_eq!(default_path(&spec(&a)).unwrap(), earlier(&a));
    // b is shown as a is: it finds that journal too, whose header refuses b as another job,
    // as before (a silent start over would send everything again if b were a, changed).
    assert_eq!(default_path(&spec(&b)).unwrap(), earlier(&a));
    let refused = Journal::open(&earlier(&a), &spec(&b), OpenMode::ResumeUnfinished).unwrap_err();
    assert!(
        refused.to_string().contains("the input's content"),
        "{refused}"
    );
    std::fs::remove_file(earlier(&a)).unwrap();
    assert_eq!(default_path(&spec(&b)).unwrap(), own_b);
    // A UTF-8 name keeps the journal it always had: its identity has no bytes part.
    let plain = temp("plain.jsonl");
    std::fs::write(&plain, "a\n").unwrap();
    let canonical = std::fs::canonicalize(&plain).unwrap();
    let identity = format!("users patch|{}|", canonical.display());
    assert_eq!(
        default_path(&spec(&plain)).unwrap().file_name().unwrap(),
        &*format!(
            "users-patch-plain-{:016x}.journal",
            fnv1a(identity.as_bytes())
        )
    );
}
