//! Streaming input: JSONL, CSV, or one JSON document, read on a blocking thread into a bounded
//! channel, so memory stays flat whatever the size of the file.
//!
//! Every line becomes either a [`Record`] (parsed and validated, ready to send) or a
//! [`Quarantined`] entry with its line number and the reason. Problems that make the whole run
//! pointless (missing file, CSV header without the required columns) are found by
//! [`Source::open`], before anything is sent.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::error::CliError;

/// How a record looked in the input, kept to write it back unchanged to the failed file.
#[derive(Debug, Clone)]
pub(crate) enum Raw {
    /// A JSONL line without its line ending, or a whole JSON document.
    Line(Vec<u8>),
    /// A CSV row.
    Csv(csv::ByteRecord),
}

impl Raw {
    /// The raw text for a quarantine entry (lossy when the input is not UTF-8).
    pub(crate) fn lossy(&self) -> String {
        match self {
            Raw::Line(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Raw::Csv(rec) => {
                let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
                let _ = w.write_byte_record(rec);
                let bytes = w.into_inner().unwrap_or_default();
                String::from_utf8_lossy(&bytes).trim_end().to_owned()
            }
        }
    }
}

/// Where a record came from: enough to report it and to write it to the failed file.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    /// 1-based line number in the input (for CSV, the row's line).
    pub(crate) line: u64,
    /// The entity the record is about (a user id), for the report.
    pub(crate) key: Option<String>,
    /// The record as it was read.
    pub(crate) raw: Raw,
}

/// A valid record, ready to deliver.
#[derive(Debug)]
pub(crate) struct Record<I> {
    pub(crate) meta: Meta,
    pub(crate) item: I,
}

/// A record that was not sent: malformed, not UTF-8, or invalid.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Quarantined {
    pub(crate) line: u64,
    pub(crate) reason: String,
    pub(crate) raw: String,
}

/// One message from the reader.
#[derive(Debug)]
pub(crate) enum Input<I> {
    Record(Record<I>),
    Quarantined(Quarantined),
    /// The input could not be read any further (an I/O error mid-file).
    Broken(String),
}

/// Turns one JSON value into the item a job sends, or says why it cannot.
pub(crate) trait Parse: Send + Sync + 'static {
    /// The item delivered for one record.
    type Item: Send + 'static;

    /// CSV columns that must be present.
    fn required_columns(&self) -> &[&'static str] {
        &[]
    }

    /// A record from a JSON value (a JSONL line or the whole document).
    fn json_record(&self, value: Value) -> Result<(Self::Item, Option<String>), String>;

    /// A record from a CSV row, given as column name -> cell text (empty cells left out).
    fn csv_record(&self, row: Map<String, Value>) -> Result<(Self::Item, Option<String>), String> {
        self.json_record(Value::Object(row))
    }
}

/// The shape of the input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// One JSON value a line.
    Jsonl,
    /// A header row, then one record a row.
    Csv,
    /// One JSON document: one record.
    Json,
}

impl Format {
    /// JSONL unless the file ends in `.csv`.
    pub(crate) fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Jsonl,
        }
    }
}

/// An opened input, checked and ready to stream.
#[derive(Debug)]
pub(crate) struct Source {
    path: PathBuf,
    format: Format,
    reader: BufReader<Unchanged>,
    /// The file's size and modification time when it was opened.
    opened: Option<Stamp>,
    /// The CSV header, also written first to the failed file.
    header: Option<csv::ByteRecord>,
}

impl Source {
    /// Opens `path` and, for CSV, reads and checks the header.
    pub(crate) fn open<P: Parse>(
        path: &Path,
        format: Format,
        parser: &P,
    ) -> Result<Self, CliError> {
        let file = File::open(path).map_err(|e| {
            CliError::usage(format!(
                "cannot open input {}: {e}; check the path given to --input",
                path.display()
            ))
        })?;
        let metadata = file.metadata();
        // A pipe's times move as it is written to: only a file's are compared.
        let opened = metadata
            .as_ref()
            .ok()
            .filter(|m| m.is_file())
            .map(Stamp::of);
        let kind = metadata.map(|m| m.file_type());
        if kind.as_ref().is_ok_and(std::fs::FileType::is_dir) {
            return Err(CliError::usage(format!(
                "input {} is a directory; give a JSONL or CSV file",
                path.display()
            )));
        }
        // A job reads its input more than once (to name the job for its journal, to count it,
        // to resume it): a pipe or a device would give each reader a part of the stream. One
        // document (one execution, no journal) is read once, and may come from a pipe.
        if format != Format::Json && kind.is_ok_and(|k| !k.is_file()) {
            return Err(CliError::usage(format!(
                "input {} is not a regular file (a pipe, a socket or a device): gcx reads its \
                 input more than once, to journal and resume the job; save the stream to a file \
                 first (cmd > records.jsonl) and give that file to --input",
                path.display()
            )));
        }
        let mut reader = BufReader::with_capacity(
            64 * 1024,
            Unchanged {
                file,
                opened,
                path: path.to_owned(),
            },
        );
        // A UTF-8 byte order mark (spreadsheet exports write one) is not part of the first
        // record: without this, a CSV header would read `\u{feff}user_id`.
        if reader
            .fill_buf()
            .is_ok_and(|b| b.starts_with(b"\xEF\xBB\xBF"))
        {
            reader.consume(3);
        }
        let mut header = None;
        if format == Format::Csv {
            let mut line = Vec::new();
            let read = read_line(&mut reader, &mut line)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
            if read == Line::TooLong {
                return Err(CliError::usage(format!(
                    "{}: the CSV header is {}",
                    path.display(),
                    too_long("a line")
                )));
            }
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(line.as_slice());
            let mut rec = csv::ByteRecord::new();
            let has = rdr.read_byte_record(&mut rec).unwrap_or(false);
            if has {
                rec.trim();
                let names: Vec<String> = rec
                    .iter()
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect();
                let missing: Vec<&str> = parser
                    .required_columns()
                    .iter()
                    .copied()
                    .filter(|c| !names.iter().any(|n| n == c))
                    .collect();
                if !missing.is_empty() {
                    return Err(CliError::usage(format!(
                        "{}: the CSV header has no {} column (found: {}); the first row must name the columns, \
                         e.g. `user_id,department,title`",
                        path.display(),
                        missing.join(", "),
                        if names.is_empty() {
                            "nothing".into()
                        } else {
                            names.join(", ")
                        }
                    )));
                }
                header = Some(rec);
            } else if reader.fill_buf().is_ok_and(|rest| !rest.is_empty()) {
                // A blank first line, and more after it: read as a file without a header, every
                // row would be left out and the job would end with nothing to do.
                return Err(CliError::usage(format!(
                    "{}: the first line of the CSV is blank; the first line must name the \
                     columns, e.g. `user_id,department,title`: remove the blank lines above it",
                    path.display()
                )));
            }
        }
        Ok(Source {
            path: path.to_owned(),
            format,
            reader,
            opened,
            header,
        })
    }

    /// Whether `path` still names the file this source reads: not replaced (renamed over)
    /// since it was opened. The job's journal describes the file at `path`, hashed after the
    /// open; a file put in its place in between would be read under another file's name.
    pub(crate) fn check_still_at(&self, path: &Path) -> Result<(), CliError> {
        // Written over in place since it was opened (its first 64 KiB are read by then): the
        // journal would describe the new content, and the job would send the old.
        let now = self
            .reader
            .get_ref()
            .file
            .metadata()
            .ok()
            .map(|m| Stamp::of(&m));
        if let (Some(before), Some(after)) = (self.opened, now)
            && before != after
        {
            return Err(CliError::usage(format!(
                "the input {} changed while the job started: run it again on a file that \
                 nothing writes to",
                path.display()
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let opened = self.reader.get_ref().file.metadata();
            let named = std::fs::metadata(path);
            if let (Ok(opened), Ok(named)) = (opened, named)
                && (opened.dev(), opened.ino()) != (named.dev(), named.ino())
            {
                return Err(CliError::usage(format!(
                    "the input {} was replaced by another file while the job started: run it \
                     again on a file that nothing writes to",
                    path.display()
                )));
            }
        }
        #[cfg(not(unix))]
        let _ = path;
        Ok(())
    }

    /// The CSV header, if the input is CSV and has one.
    pub(crate) fn header(&self) -> Option<&csv::ByteRecord> {
        self.header.as_ref()
    }

    /// The input's format.
    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// Streams every record into a channel of `capacity` messages, on a blocking thread.
    /// The thread stops early when the receiver is dropped.
    pub(crate) fn stream<P: Parse>(
        self,
        parser: std::sync::Arc<P>,
        capacity: usize,
    ) -> InputRx<P::Item> {
        self.stream_within(parser, capacity, READ_AHEAD_BYTES)
    }

    /// [`stream`](Self::stream), with at most `limit` bytes read ahead.
    fn stream_within<P: Parse>(
        self,
        parser: std::sync::Arc<P>,
        capacity: usize,
        limit: usize,
    ) -> InputRx<P::Item> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let budget = std::sync::Arc::new(Budget::default());
        let rx = InputRx {
            rx,
            budget: Some(budget.clone()),
        };
        let tx = InputTx { tx, budget, limit };
        std::thread::Builder::new()
            .name("gcx-input".into())
            .spawn(move || {
                let path = self.path.clone();
                // The file itself, as opened (not its path, which may name another by now).
                let file = self.reader.get_ref().file.try_clone().ok();
                let opened = self.opened;
                let result = match self.format {
                    Format::Jsonl => read_jsonl(self.reader, &*parser, &tx),
                    Format::Csv => read_csv(self.reader, self.header, &*parser, &tx),
                    Format::Json => read_document(self.reader, &*parser, &tx),
                };
                if let Err(e) = result {
                    let why = match e.get_ref().and_then(|e| e.downcast_ref::<Changed>()) {
                        Some(changed) => changed.to_string(),
                        None => format!("reading {} failed: {e}", path.display()),
                    };
                    let _ = send(&tx, Input::Broken(why));
                    return;
                }
                // Written over while it was read (an export rewritten in place, an editor's
                // save): the records read after that came from another file than the one the
                // job was started on, and its journal describes.
                let now = file.and_then(|f| f.metadata().ok()).map(|m| Stamp::of(&m));
                if let (Some(before), Some(after)) = (opened, now)
                    && before != after
                {
                    let _ = send(
                        &tx,
                        Input::Broken(changed(&path, before, after, Stop::AfterTheEnd)),
                    );
                }
            })
            .expect("spawning the input thread");
        rx
    }
}

/// The input file, read only while it is as it was opened: every read (the reader's buffer is
/// refilled every 64 KiB) first checks its size and modification time, and fails with
/// [`Changed`] once they moved. Without it, a file rewritten in place early in a long job was
/// read on, from its new content, to its end before the change was noticed.
#[derive(Debug)]
struct Unchanged {
    file: File,
    /// Its size and modification time when it was opened (`None`: not a regular file, whose
    /// times move as it is written to).
    opened: Option<Stamp>,
    path: PathBuf,
}

/// Why [`Unchanged`] stopped, and where (the line, once the reader that met it says).
#[derive(Debug)]
struct Changed {
    path: PathBuf,
    before: Stamp,
    after: Stamp,
    line: Option<u64>,
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stop = self.line.map_or(Stop::Midway, Stop::AtLine);
        f.write_str(&changed(&self.path, self.before, self.after, stop))
    }
}

impl std::error::Error for Changed {}

impl Read for Unchanged {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(before) = self.opened
            && let Ok(now) = self.file.metadata()
        {
            let after = Stamp::of(&now);
            if after != before {
                return Err(std::io::Error::other(Changed {
                    path: self.path.clone(),
                    before,
                    after,
                    line: None,
                }));
            }
        }
        self.file.read(buf)
    }
}

/// A file's size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Stamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

/// What the job says of an input written over while it was read.
/// Where reading was when an input was found changed.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// It stopped before this line.
    AtLine(u64),
    /// It stopped, at a line not known.
    Midway,
    /// It had read the whole input: the change came after its last read.
    AfterTheEnd,
}

fn changed(path: &Path, before: Stamp, after: Stamp, stop: Stop) -> String {
    let how = if before.len == after.len {
        format!("modified, {} bytes", after.len)
    } else {
        format!("{} bytes, then {}", before.len, after.len)
    };
    let read = match stop {
        Stop::AtLine(line) => format!(
            "reading stopped at line {line}: it and the lines after it were not read, and \
             nothing of them was sent"
        ),
        Stop::Midway => "reading stopped: what was left of it was not read, and nothing of \
                         it was sent"
            .to_owned(),
        Stop::AfterTheEnd => "records read last may come from its new content".to_owned(),
    };
    format!(
        "the input {} changed while the job read it ({how}); {read}. If only its time changed \
         (a `touch`), run the same command again: the journal resumes the job. If its content \
         changed, the journal describes the old content: check the records listed (failed, \
         unknown), then run the job on a copy that nothing writes to, with --fresh or another \
         --journal",
        path.display()
    )
}

/// `e`, with the line where reading stopped when it is a [`Changed`].
fn stopped_at(e: std::io::Error, line: u64) -> std::io::Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Changed>())
    {
        Some(Changed {
            path,
            before,
            after,
            ..
        }) => std::io::Error::other(Changed {
            path: path.clone(),
            before: *before,
            after: *after,
            line: Some(line),
        }),
        None => e,
    }
}

/// The most bytes of records read ahead and not yet taken by the job: however many records
/// the read-ahead counts (`--concurrency` times `--chunk-size`, twice), large records do not
/// pile up past it. One record larger than it still goes, alone.
pub(crate) const READ_AHEAD_BYTES: usize = 64 * 1024 * 1024;

/// The bytes the reader has sent and the job has not taken yet.
#[derive(Default)]
struct Budget {
    held: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Budget {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits (on the reader's thread) until `n` more bytes fit, or nothing is held; gives up
    /// when `gone` says the job stopped listening.
    fn take(&self, n: usize, limit: usize, gone: impl Fn() -> bool) -> Result<(), Closed> {
        let mut held = self.lock();
        while *held > 0 && held.saturating_add(n) > limit {
            if gone() {
                return Err(Closed);
            }
            held = self
                .freed
                .wait_timeout(held, std::time::Duration::from_millis(100))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        *held = held.saturating_add(n);
        Ok(())
    }

    fn give_back(&self, n: usize) {
        let mut held = self.lock();
        *held = held.saturating_sub(n);
        self.freed.notify_one();
    }
}

/// What a message weighs against [`READ_AHEAD_BYTES`], about: a record four times its raw
/// bytes (the raw record, and the item parsed from it, which holds more than its text), and
/// every message [`MESSAGE_COST`] more, so that tiny records are not free.
fn weight<I>(msg: &Input<I>) -> usize {
    let bytes = match msg {
        Input::Record(r) => match &r.meta.raw {
            Raw::Line(bytes) => bytes.len(),
            Raw::Csv(rec) => rec.as_slice().len(),
        }
        .saturating_mul(4)
        .saturating_add(r.meta.key.as_ref().map_or(0, String::len)),
        Input::Quarantined(q) => q.raw.len().saturating_add(q.reason.len()),
        Input::Broken(why) => why.len(),
    };
    bytes.saturating_add(MESSAGE_COST)
}

/// What a message weighs besides its bytes: the message itself and its allocations.
const MESSAGE_COST: usize = 256;

/// The job's end of the reader: its messages, in order, within [`READ_AHEAD_BYTES`] when it
/// comes from [`Source::stream`].
pub(crate) struct InputRx<I> {
    rx: mpsc::Receiver<Input<I>>,
    budget: Option<std::sync::Arc<Budget>>,
}

impl<I> InputRx<I> {
    /// The next message; `None` once the reader is done.
    pub(crate) async fn recv(&mut self) -> Option<Input<I>> {
        let msg = self.rx.recv().await?;
        Some(self.taken(msg))
    }

    /// [`recv`](Self::recv), from a thread outside the runtime.
    #[cfg(test)]
    pub(crate) fn blocking_recv(&mut self) -> Option<Input<I>> {
        let msg = self.rx.blocking_recv()?;
        Some(self.taken(msg))
    }

    fn taken(&self, msg: Input<I>) -> Input<I> {
        if let Some(budget) = &self.budget {
            budget.give_back(weight(&msg));
        }
        msg
    }
}

/// Messages sent by hand (tests), without a byte budget.
impl<I> From<mpsc::Receiver<Input<I>>> for InputRx<I> {
    fn from(rx: mpsc::Receiver<Input<I>>) -> Self {
        InputRx { rx, budget: None }
    }
}

/// The reader's end: sends each message once its bytes fit in the read-ahead.
struct InputTx<I> {
    tx: mpsc::Sender<Input<I>>,
    budget: std::sync::Arc<Budget>,
    limit: usize,
}

/// A closed channel means the job stopped listening: not an error, stop reading.
struct Closed;

impl From<Closed> for std::io::Error {
    fn from(_: Closed) -> Self {
        std::io::Error::other("closed")
    }
}

fn send<I>(tx: &InputTx<I>, msg: Input<I>) -> Result<(), Closed> {
    tx.budget
        .take(weight(&msg), tx.limit, || tx.tx.is_closed())?;
    tx.tx.blocking_send(msg).map_err(|_| Closed)
}

/// The longest record gcx holds in memory: 16 MiB (a JSONL line, a CSV row, a JSON
/// document). A longer line is quarantined; a longer CSV row or document stops the reading with
/// a message. Either way the file is never read whole into memory.
pub(crate) const MAX_RECORD: usize = 16 * 1024 * 1024;

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line, in the buffer.
    Read,
    /// A line longer than [`MAX_RECORD`], skipped to its end; the buffer holds its start.
    TooLong,
    /// The end of the input.
    End,
}

/// Reads one line (up to and without `\n` / `\r\n`), holding at most [`MAX_RECORD`] bytes of
/// it.
fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Line> {
    buf.clear();
    let limit = u64::try_from(MAX_RECORD)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let n = r.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Line::Read);
    }
    if buf.len() <= MAX_RECORD {
        // The last line, without a newline.
        return Ok(Line::Read);
    }
    // Too long: the rest of it is skipped, never held.
    buf.truncate(QUARANTINED_PREFIX);
    loop {
        let available = r.fill_buf()?;
        if available.is_empty() {
            break;
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                break;
            }
            None => {
                let n = available.len();
                r.consume(n);
            }
        }
    }
    Ok(Line::TooLong)
}

/// How much of a record too long to read the quarantine file shows.
const QUARANTINED_PREFIX: usize = 256;

/// The reason given for a line past [`MAX_RECORD`].
fn too_long(what: &str) -> String {
    format!(
        "{what} longer than {} MiB, the most gcx reads as one record; only its start is shown \
         here (is a newline missing?)",
        MAX_RECORD / (1024 * 1024)
    )
}

/// A reader that fails once more than [`MAX_RECORD`] bytes have been read since the last
/// [`reset`](Self::reset): a CSV reader holds a whole row in memory, and a row whose quote is
/// never closed would be the rest of the file.
struct RecordLimit<R> {
    inner: R,
    read: u64,
}

impl<R> RecordLimit<R> {
    fn reset(&mut self) {
        self.read = 0;
    }
}

impl<R: Read> Read for RecordLimit<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let limit = u64::try_from(MAX_RECORD).unwrap_or(u64::MAX);
        if self.read > limit {
            return Err(std::io::Error::other(format!(
                "{}; stopped there",
                too_long("a CSV row (or a quote never closed)")
            )));
        }
        let n = self.inner.read(out)?;
        self.read = self
            .read
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        Ok(n)
    }
}

fn quarantine(line: u64, reason: String, raw: &[u8]) -> Quarantined {
    Quarantined {
        line,
        reason,
        raw: String::from_utf8_lossy(raw).into_owned(),
    }
}

/// Parses one JSON text, naming the first problem a person would need to fix.
pub(crate) fn parse_json<P: Parse>(
    parser: &P,
    bytes: &[u8],
) -> Result<(P::Item, Option<String>), String> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(format!("not valid UTF-8 (byte {})", e.valid_up_to() + 1));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("malformed JSON: {e}"))?;
    parser.json_record(value)
}

fn read_jsonl<P: Parse>(
    mut reader: BufReader<Unchanged>,
    parser: &P,
    tx: &InputTx<P::Item>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        match read_line(&mut reader, &mut buf).map_err(|e| stopped_at(e, line + 1))? {
            Line::End => break,
            Line::Read => {}
            Line::TooLong => {
                line += 1;
                send(
                    tx,
                    Input::Quarantined(quarantine(line, too_long("a line"), &buf)),
                )?;
                continue;
            }
        }
        line += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let msg = match parse_json(parser, &buf) {
            Ok((item, key)) => Input::Record(Record {
                meta: Meta {
                    line,
                    key,
                    raw: Raw::Line(buf.clone()),
                },
                item,
            }),
            Err(reason) => Input::Quarantined(quarantine(line, reason, &buf)),
        };
        send(tx, msg)?;
    }
    Ok(())
}

fn read_document<P: Parse>(
    mut reader: BufReader<Unchanged>,
    parser: &P,
    tx: &InputTx<P::Item>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let limit = u64::try_from(MAX_RECORD).unwrap_or(u64::MAX);
    reader
        .by_ref()
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)?;
    if buf.len() > MAX_RECORD {
        return Err(std::io::Error::other(too_long("the document")));
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let msg = match parse_json(parser, &buf) {
        Ok((item, key)) => Input::Record(Record {
            meta: Meta {
                line: 1,
                key,
                raw: Raw::Line(buf),
            },
            item,
        }),
        Err(reason) => Input::Quarantined(quarantine(1, reason, &buf)),
    };
    send(tx, msg)?;
    Ok(())
}

fn read_csv<P: Parse>(
    reader: BufReader<Unchanged>,
    header: Option<csv::ByteRecord>,
    parser: &P,
    tx: &InputTx<P::Item>,
) -> std::io::Result<()> {
    let Some(header) = header else {
        return Ok(());
    };
    let names: Vec<String> = header
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(RecordLimit {
            inner: reader,
            read: 0,
        });
    let mut rec = csv::ByteRecord::new();
    loop {
        // Counted from here: the reader's read-ahead is a few KiB, so a row is cut at about
        // `MAX_RECORD`.
        rdr.get_mut().reset();
        let read = rdr.read_byte_record(&mut rec);
        // The header was line 1 and was consumed before this reader started.
        let line = rdr.position().line() + 1;
        match read {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => match e.kind() {
                csv::ErrorKind::Io(_) => {
                    return Err(match e.into_kind() {
                        csv::ErrorKind::Io(io) => stopped_at(io, line),
                        other => std::io::Error::other(format!("{other:?}")),
                    });
                }
                _ => {
                    send(
                        tx,
                        Input::Quarantined(quarantine(line, format!("malformed CSV: {e}"), b"")),
                    )?;
                    continue;
                }
            },
        }
        let line = rec.position().map(|p| p.line() + 1).unwrap_or(line);
        if rec.len() == 1 && rec.get(0).is_some_and(|c| c.is_empty()) {
            continue;
        }
        let raw = Raw::Csv(rec.clone());
        let result = csv_row(&names, &rec).and_then(|row| parser.csv_record(row));
        let msg = match result {
            Ok((item, key)) => Input::Record(Record {
                meta: Meta { line, key, raw },
                item,
            }),
            Err(reason) => Input::Quarantined(Quarantined {
                line,
                reason,
                raw: raw.lossy(),
            }),
        };
        send(tx, msg)?;
    }
}

fn csv_row(names: &[String], rec: &csv::ByteRecord) -> Result<Map<String, Value>, String> {
    if rec.len() != names.len() {
        return Err(format!(
            "row has {} fields, the header has {}",
            rec.len(),
            names.len()
        ));
    }
    let mut row = Map::new();
    for (i, (name, cell)) in names.iter().zip(rec.iter()).enumerate() {
        let cell = std::str::from_utf8(cell)
            .map_err(|_| format!("not valid UTF-8 in column {} ({name})", i + 1))?;
        if !cell.is_empty() {
            row.insert(name.clone(), Value::String(cell.to_owned()));
        }
    }
    Ok(row)
}

/// Counts the lines of `path` (for a progress bar's length); `None` if it cannot be read.
pub(crate) fn count_lines(path: &Path) -> Option<u64> {
    let mut file = File::open(path).ok()?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut lines = 0u64;
    let mut last = b'\n';
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    if last != b'\n' {
        lines += 1;
    }
    Some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    struct Obj;
    impl Parse for Obj {
        type Item = Value;
        fn required_columns(&self) -> &[&'static str] {
            &["id"]
        }
        fn json_record(&self, value: Value) -> Result<(Value, Option<String>), String> {
            match value.get("id").and_then(Value::as_str) {
                Some(id) => Ok((value.clone(), Some(id.to_owned()))),
                None => Err("no id".into()),
            }
        }
    }

    fn file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gcx-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        path
    }

    fn drain(path: &Path, format: Format) -> Vec<Input<Value>> {
        let src = Source::open(path, format, &Obj).unwrap();
        let mut rx = src.stream(Arc::new(Obj), 2);
        let mut out = Vec::new();
        while let Some(m) = rx.blocking_recv() {
            out.push(m);
        }
        out
    }

    #[test]
    fn jsonl_lines_are_numbered_and_bad_ones_quarantined() {
        let path = file(
            "a.jsonl",
            b"{\"id\":\"a\"}\r\n\n{oops\n{\"id\":\"\xff\"}\n{\"x\":1}\n{\"id\":\"b\"}",
        );
        let got = drain(&path, Format::Jsonl);
        let summary: Vec<String> = got
            .iter()
            .map(|m| match m {
                Input::Record(r) => format!("ok {}", r.meta.line),
                Input::Quarantined(q) => format!("q {} {}", q.line, q.reason),
                Input::Broken(e) => format!("broken {e}"),
            })
            .collect();
        assert_eq!(summary[0], "ok 1");
        assert!(summary[1].starts_with("q 3 malformed JSON"), "{summary:?}");
        assert!(summary[2].starts_with("q 4 not valid UTF-8"), "{summary:?}");
        assert_eq!(summary[3], "q 5 no id");
        assert_eq!(summary[4], "ok 6");
        assert_eq!(summary.len(), 5);
    }

    #[test]
    fn large_records_are_read_ahead_within_the_byte_budget_and_none_is_lost() {
        // 20 records of about 1 MB (each weighs 4 MB: the line and its item), 3 MB read ahead.
        let mut bytes = Vec::new();
        for n in 0..20 {
            bytes.extend_from_slice(format!("{{\"id\":\"{n}\",\"pad\":\"").as_bytes());
            bytes.extend(std::iter::repeat_n(b'x', 1 << 20));
            bytes.extend_from_slice(b"\"}\n");
        }
        let path = file("large.jsonl", &bytes);
        let src = Source::open(&path, Format::Jsonl, &Obj).unwrap();
        let mut rx = src.stream_within(Arc::new(Obj), 64, 3 << 20);
        let mut got = 0;
        loop {
            // Time for the reader to run ahead as far as it may.
            std::thread::sleep(std::time::Duration::from_millis(if got == 0 {
                500
            } else {
                5
            }));
            let queued = rx.rx.len();
            assert!(queued <= 1, "{queued} records of 1 MB read ahead past 3 MB");
            match rx.blocking_recv() {
                Some(Input::Record(_)) => got += 1,
                Some(other) => panic!("{other:?}"),
                None => break,
            }
        }
        assert_eq!(got, 20, "every record arrives");
    }

    /// A long input rewritten in place early in the job: the reader stops at its next buffer
    /// (every 64 KiB), not at the end of the file, having sent its new content all along.
    #[test]
    fn an_input_written_over_is_noticed_at_the_next_read_not_at_its_end() {
        let records = 20_000;
        let lines: String = (0..records)
            .map(|n| format!("{{\"id\":\"{n:0>40}\"}}\n"))
            .collect();
        let path = file("rewritten-long.jsonl", lines.as_bytes());
        let src = Source::open(&path, Format::Jsonl, &Obj).unwrap();
        let mut rx = src.stream(Arc::new(Obj), 1);
        assert!(matches!(rx.blocking_recv(), Some(Input::Record(_))));
        let mut other = lines.replace("\"id\":\"0", "\"id\":\"x");
        other.push('\n');
        std::fs::write(&path, other).unwrap();
        let mut got = 1;
        let why = loop {
            match rx.blocking_recv() {
                Some(Input::Record(_)) => got += 1,
                Some(Input::Broken(why)) => break why,
                other => panic!("{other:?}"),
            }
        };
        assert!(why.contains("changed while the job read it"), "{why}");
        assert!(
            got < records / 4,
            "{got} of {records} records sent before the change was noticed"
        );
        // Where it stopped, for the report: the line after the last one sent.
        let stopped = format!(
            "reading stopped at line {}: it and the lines after it",
            got + 1
        );
        assert!(why.contains(&stopped), "{why}");

        // Only touched: the same, and the advice says the same command resumes it.
        let path = file("touched-long.jsonl", lines.as_bytes());
        let src = Source::open(&path, Format::Jsonl, &Obj).unwrap();
        let mut rx = src.stream(Arc::new(Obj), 1);
        assert!(matches!(rx.blocking_recv(), Some(Input::Record(_))));
        let an_hour_on = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(an_hour_on)
            .unwrap();
        let why = loop {
            match rx.blocking_recv() {
                Some(Input::Record(_)) => {}
                Some(Input::Broken(why)) => break why,
                other => panic!("{other:?}"),
            }
        };
        assert!(why.contains("If only its time changed"), "{why}");
        assert!(why.contains("run the same command again"), "{why}");
    }

    #[test]
    fn an_input_written_over_while_it_is_read_breaks_the_job_saying_so() {
        let lines: String = (0..200).map(|n| format!("{{\"id\":\"{n}\"}}\n")).collect();
        let path = file("rewritten.jsonl", lines.as_bytes());
        let src = Source::open(&path, Format::Jsonl, &Obj).unwrap();
        let mut rx = src.stream(Arc::new(Obj), 1);
        assert!(matches!(rx.blocking_recv(), Some(Input::Record(_))));
        // Rewritten in place, as an export run again writes it, while the reader waits.
        std::fs::write(&path, b"{\"id\":\"other\"}\n").unwrap();
        let mut last = None;
        while let Some(m) = rx.blocking_recv() {
            last = Some(m);
        }
        match last {
            Some(Input::Broken(why)) => {
                assert!(why.contains("changed while the job read it"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // Read whole and unchanged: nothing said.
        let path = file("kept.jsonl", lines.as_bytes());
        assert!(
            drain(&path, Format::Jsonl)
                .iter()
                .all(|m| matches!(m, Input::Record(_)))
        );
    }

    #[test]
    fn an_input_renamed_over_after_it_was_opened_is_refused() {
        let path = file("renamed.jsonl", b"{\"id\":\"a\"}\n");
        let src = Source::open(&path, Format::Jsonl, &Obj).unwrap();
        src.check_still_at(&path).unwrap();
        let other = file("other.jsonl", b"{\"id\":\"b\"}\n");
        std::fs::rename(&other, &path).unwrap();
        let err = src.check_still_at(&path).unwrap_err();
        assert!(err.to_string().contains("was replaced"), "{err}");
    }

    /// Written over in place between its opening and its hashing (the journal would describe
    /// the new content while the job sends the old, read at the opening): refused.
    #[test]
    fn an_input_written_over_as_the_job_starts_is_refused() {
        let path = file("written-at-start.jsonl", b"{\"id\":\"a\"}\n");
        let src = Source::open(&path, Format::Jsonl, &Obj).unwrap();
        std::fs::write(&path, b"{\"id\":\"b\"}\n{\"id\":\"c\"}\n").unwrap();
        let err = src.check_still_at(&path).unwrap_err();
        assert!(
            err.to_string().contains("changed while the job started"),
            "{err}"
        );
    }

    #[test]
    fn csv_needs_its_columns() {
        let path = file("b.csv", b"name,title\nx,y\n");
        let err = Source::open(&path, Format::Csv, &Obj).unwrap_err();
        assert!(err.to_string().contains("no id column"), "{err}");
    }

    #[test]
    fn a_csv_with_a_blank_first_line_is_refused_not_read_as_empty() {
        for (name, bytes) in [
            ("blank.csv", &b"\nid,title\nabc,Boss\n"[..]),
            ("crlf.csv", &b"\r\nid,title\r\nabc,Boss\r\n"[..]),
        ] {
            let path = file(name, bytes);
            let err = Source::open(&path, Format::Csv, &Obj)
                .err()
                .unwrap_or_else(|| panic!("{name}: a blank first line was read as no header"));
            assert!(
                err.to_string().contains("first line of the CSV is blank"),
                "{err}"
            );
        }
        // An empty file is still an input with no records.
        let path = file("empty.csv", b"");
        assert!(drain(&path, Format::Csv).is_empty());
    }

    #[test]
    fn csv_rows_become_objects() {
        let path = file("c.csv", b"id,title\na,Boss\nb\nc,\n");
        let got = drain(&path, Format::Csv);
        match &got[0] {
            Input::Record(r) => {
                assert_eq!(r.meta.line, 2);
                assert_eq!(r.item, serde_json::json!({"id": "a", "title": "Boss"}));
            }
            other => panic!("{other:?}"),
        }
        match &got[1] {
            Input::Quarantined(q) => {
                assert_eq!(q.line, 3);
                assert!(q.reason.contains("1 fields"), "{}", q.reason);
            }
            other => panic!("{other:?}"),
        }
        match &got[2] {
            Input::Record(r) => assert_eq!(r.item, serde_json::json!({"id": "c"})),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_file_is_refused() {
        let err = Source::open(Path::new("/nonexistent/x.jsonl"), Format::Jsonl, &Obj).unwrap_err();
        assert!(err.to_string().contains("--input"));
    }

    /// What each message of `got` says, in one line each.
    fn summary(got: &[Input<Value>]) -> Vec<String> {
        got.iter()
            .map(|m| match m {
                Input::Record(r) => format!("ok {}", r.meta.line),
                Input::Quarantined(q) => format!("q {} {}", q.line, q.reason),
                Input::Broken(e) => format!("broken {e}"),
            })
            .collect()
    }

    #[test]
    fn a_line_past_the_limit_is_quarantined_and_the_next_one_read() {
        let mut bytes = b"{\"id\":\"a\"}\n{\"id\":\"".to_vec();
        bytes.resize(bytes.len() + MAX_RECORD + 10, b'x');
        bytes.extend_from_slice(b"\"}\n{\"id\":\"b\"}\n");
        let path = file("long.jsonl", &bytes);
        let got = drain(&path, Format::Jsonl);
        let summary = summary(&got);
        assert_eq!(summary[0], "ok 1");
        assert!(
            summary[1].starts_with("q 2 a line longer than 16 MiB"),
            "{summary:?}"
        );
        assert_eq!(summary[2], "ok 3");
        assert_eq!(summary.len(), 3);
        let Input::Quarantined(q) = &got[1] else {
            panic!("quarantined");
        };
        assert_eq!(q.raw.len(), QUARANTINED_PREFIX, "only its start is kept");
    }

    #[test]
    fn a_csv_quote_never_closed_stops_the_reading_at_the_limit() {
        let mut bytes = b"id,title\na,\"never closed".to_vec();
        bytes.resize(bytes.len() + 2 * MAX_RECORD, b'x');
        let path = file("open-quote.csv", &bytes);
        let summary = summary(&drain(&path, Format::Csv));
        assert_eq!(summary.len(), 1, "{summary:?}");
        assert!(
            summary[0].starts_with("broken ") && summary[0].contains("quote never closed"),
            "{summary:?}"
        );
    }

    #[test]
    fn a_document_past_the_limit_is_refused() {
        let mut bytes = b"{\"id\":\"".to_vec();
        bytes.resize(bytes.len() + MAX_RECORD, b'x');
        bytes.extend_from_slice(b"\"}");
        let path = file("big.json", &bytes);
        let summary = summary(&drain(&path, Format::Json));
        assert_eq!(summary.len(), 1, "{summary:?}");
        assert!(
            summary[0].contains("the document longer than 16 MiB"),
            "{summary:?}"
        );
    }

    #[test]
    fn a_device_is_refused() {
        let err = Source::open(Path::new("/dev/null"), Format::Jsonl, &Obj).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn lines_are_counted() {
        assert_eq!(count_lines(&file("d", b"a\nb\nc")), Some(3));
        assert_eq!(count_lines(&file("e", b"a\nb\n")), Some(2));
        assert_eq!(count_lines(&file("f", b"")), Some(0));
    }
}
