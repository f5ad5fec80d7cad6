//! `RUN_DIR/metrics.jsonl`: one JSON object per training step, appended and flushed as
//! it happens, never rewritten, so a crash loses at most the line being written and a
//! resumed run continues the same file. `sympathy plot` and any `jq` one-liner read it.

use crate::{Error, Result, Step};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The update this line reports (1-based: the first update is step 1).
    pub step: Step,
    /// Training loss of this step's batch, in nats per token (null when not finite).
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    /// The validation loss in bits per byte of text: comparable across tokenizers.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_bpb: Option<f64>,
    pub lr: f64,
    pub tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mfu: Option<f64>,
    pub elapsed_s: f64,
    pub tokens_seen: u64,
    /// Bytes of training text seen: tokens seen × the training split's bytes per token.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bytes_seen: Option<u64>,
    pub grad_norm: Option<f64>,
}

pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Opens `path` for appending, creating it if needed. A line torn by a crash is
    /// ended first (never removed), so the next record starts on a line of its own.
    pub fn append(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        if ends_mid_line(&mut file).map_err(|e| Error::io(path, e))? {
            file.write_all(b"\n").map_err(|e| Error::io(path, e))?;
        }
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("record serialises");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Whether the file is non-empty and its last byte is not a newline.
fn ends_mid_line(file: &mut File) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Reads every record of a metrics file, skipping a torn last line. When a run was
/// killed between checkpoints and resumed, the redone steps appear twice; the later
/// line of a step wins, since it belongs to the run that continued.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if let Ok(r) = serde_json::from_str::<Record>(&line) {
            out.retain(|old: &Record| old.step < r.step);
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: Step) -> Record {
        Record {
            step,
            loss: Some(1.0),
            val_loss: None,
            val_bpb: None,
            lr: 1e-3,
            tokens_per_s: 1.0,
            mfu: None,
            elapsed_s: 0.0,
            tokens_seen: 0,
            bytes_seen: None,
            grad_norm: Some(1.0),
        }
    }

    #[test]
    fn a_torn_last_line_is_ended_not_removed_and_later_lines_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::append(&path).unwrap();
        w.write(&record(1)).unwrap();
        w.write(&record(2)).unwrap();
        drop(w);
        // A crash in the middle of writing step 3.
        let torn = "{\"step\":3,\"lo";
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(torn.as_bytes())
            .unwrap();
        let mut w = MetricsWriter::append(&path).unwrap();
        w.write(&record(2)).unwrap(); // redone after resuming from step 1's checkpoint
        w.write(&record(3)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().nth(2), Some(torn), "nothing is rewritten");
        assert_eq!(text.lines().count(), 5);
        let steps: Vec<Step> = read(&path).unwrap().iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![1, 2, 3]);
    }
}
