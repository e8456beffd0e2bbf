//! Where a job writes the items it could not deliver: the failed file (items safe to send
//! again, in the input's own format), the unknown file (items whose outcome is unknown, in the
//! input's format too) and the quarantine file (invalid records with their line and reason).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::CliError;
use crate::input::{Format, Quarantined, Raw};

/// Where failed, unknown and quarantined items are written as the job goes.
#[derive(Debug, Default)]
pub(crate) struct Sinks {
    failed: Option<ItemWriter>,
    unknown: Option<ItemWriter>,
    quarantine: Option<BufWriter<File>>,
}

/// Items written back in the input's own format (JSONL lines, or CSV rows after the header).
#[derive(Debug)]
enum ItemWriter {
    Lines(BufWriter<File>),
    Csv(Box<csv::Writer<File>>),
}

fn create(path: &Path, flag: &str) -> Result<File, CliError> {
    File::create(path).map_err(|e| {
        CliError::usage(format!(
            "cannot create {flag} file {}: {e}; choose a writable path",
            path.display()
        ))
    })
}

/// Refuses an output path that is the input itself: writing it would destroy the input.
pub(crate) fn check_distinct(input: &Path, output: &Path, flag: &str) -> Result<(), CliError> {
    check_not_over(input, "the input file", output, flag)
}

/// Refuses an output that is `read`, a file the job reads (`what`: the input, the schema, the
/// configuration): it would be truncated and overwritten.
pub(crate) fn check_not_over(
    read: &Path,
    what: &str,
    output: &Path,
    flag: &str,
) -> Result<(), CliError> {
    if same_file(read, output) {
        return Err(CliError::usage(format!(
            "{flag} {} is {what}; write to another file (e.g. {}.next)",
            output.display(),
            output.display()
        )));
    }
    Ok(())
}

/// Refuses two outputs named by different flags that are one file: each would truncate and
/// overwrite what the other wrote.
pub(crate) fn check_outputs_distinct(outputs: &[(&str, &Path)]) -> Result<(), CliError> {
    for (i, (flag_a, a)) in outputs.iter().enumerate() {
        for (flag_b, b) in &outputs[i + 1..] {
            if same_file(a, b) {
                return Err(CliError::usage(format!(
                    "{flag_a} and {flag_b} both name {}: each output needs a file of its own",
                    a.display()
                )));
            }
        }
    }
    Ok(())
}

/// Whether `a` and `b` name one regular file, whether it exists yet or not (`/dev/null` given
/// twice, to throw two outputs away, is not one file written twice).
fn same_file(a: &Path, b: &Path) -> bool {
    let special = |p: &Path| std::fs::metadata(p).is_ok_and(|m| !m.is_file());
    if special(a) || special(b) {
        return false;
    }
    // Two names of one file (a hard link, a bind mount): the same device and inode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b))
            && (x.dev(), x.ino()) == (y.dev(), y.ino())
        {
            return true;
        }
    }
    match (resolved(a), resolved(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// `path` made absolute, through its directory when the file does not exist yet.
fn resolved(path: &Path) -> Option<std::path::PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Some(p);
    }
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(name))
}

impl Sinks {
    /// Opens the output files (truncating them) before anything is sent.
    pub(crate) fn open(
        failed: Option<&Path>,
        unknown: Option<&Path>,
        quarantine: Option<&Path>,
        format: Format,
        header: Option<&csv::ByteRecord>,
    ) -> Result<Self, CliError> {
        let failed = match failed {
            None => None,
            Some(path) => Some(ItemWriter::create(path, "--failed", format, header)?),
        };
        let unknown = match unknown {
            None => None,
            Some(path) => Some(ItemWriter::create(path, "--unknown", format, header)?),
        };
        let quarantine = match quarantine {
            None => None,
            Some(path) => Some(BufWriter::new(create(path, "--quarantine")?)),
        };
        Ok(Sinks {
            failed,
            unknown,
            quarantine,
        })
    }

    /// Writes an item that was not delivered and may be sent again to the failed file.
    pub(crate) fn write_failed(&mut self, raw: &Raw) -> std::io::Result<()> {
        match &mut self.failed {
            Some(w) => w.write(raw),
            None => Ok(()),
        }
    }

    /// Writes an item whose outcome is unknown to the unknown file.
    pub(crate) fn write_unknown(&mut self, raw: &Raw) -> std::io::Result<()> {
        match &mut self.unknown {
            Some(w) => w.write(raw),
            None => Ok(()),
        }
    }

    /// Writes a quarantined record (JSONL: line, reason, raw).
    pub(crate) fn write_quarantine(&mut self, q: &Quarantined) -> std::io::Result<()> {
        if let Some(w) = &mut self.quarantine {
            serde_json::to_writer(&mut *w, q)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Flushes every file; the first error is returned.
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        let failed = self.failed.as_mut().map_or(Ok(()), ItemWriter::flush);
        let unknown = self.unknown.as_mut().map_or(Ok(()), ItemWriter::flush);
        let quarantine = self.quarantine.as_mut().map_or(Ok(()), Write::flush);
        failed.and(unknown).and(quarantine)
    }
}

impl ItemWriter {
    fn create(
        path: &Path,
        flag: &str,
        format: Format,
        header: Option<&csv::ByteRecord>,
    ) -> Result<Self, CliError> {
        let file = create(path, flag)?;
        Ok(match (format, header) {
            (Format::Csv, Some(header)) => {
                let mut w = csv::WriterBuilder::new().flexible(true).from_writer(file);
                w.write_byte_record(header)
                    .and_then(|()| w.flush().map_err(Into::into))
                    .map_err(|e| {
                        CliError::usage(format!(
                            "cannot write {flag} file {}: {e}; choose a writable path",
                            path.display()
                        ))
                    })?;
                ItemWriter::Csv(Box::new(w))
            }
            _ => ItemWriter::Lines(BufWriter::new(file)),
        })
    }

    fn write(&mut self, raw: &Raw) -> std::io::Result<()> {
        match (self, raw) {
            (ItemWriter::Lines(w), Raw::Line(bytes)) => {
                w.write_all(bytes)?;
                w.write_all(b"\n")
            }
            (ItemWriter::Csv(w), Raw::Csv(rec)) => w.write_byte_record(rec).map_err(Into::into),
            // A CSV row into a line file cannot happen: the writer follows the input's format.
            (ItemWriter::Lines(w), raw @ Raw::Csv(_)) => {
                w.write_all(raw.lossy().as_bytes())?;
                w.write_all(b"\n")
            }
            (ItemWriter::Csv(w), Raw::Line(bytes)) => w
                .write_byte_record(&csv::ByteRecord::from(vec![bytes.as_slice()]))
                .map_err(Into::into),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ItemWriter::Lines(w) => w.flush(),
            ItemWriter::Csv(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hard link to the input is the input: writing to it would truncate what the job reads.
    #[cfg(unix)]
    #[test]
    fn an_output_that_is_a_hard_link_to_the_input_is_refused() {
        let dir = std::env::temp_dir().join(format!("gcx-sinks-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("u.jsonl");
        std::fs::write(&input, b"{}\n").unwrap();
        let link = dir.join("failed.jsonl");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&input, &link).unwrap();
        let err = check_distinct(&input, &link, "--failed").unwrap_err();
        assert!(err.to_string().contains("--failed"), "{err}");
        check_distinct(&input, &dir.join("other.jsonl"), "--failed").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
