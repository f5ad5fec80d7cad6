//! `RUN_DIR/metrics.jsonl`: one JSON object per training step, appended and flushed as
//! it happens, never rewritten, so a crash loses at most the line being written and a
//! resumed run continues the same file. `sympathy plot` and any `jq` one-liner read it.

use crate::{Error, Result, Step};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The update this line reports (1-based: the first update is step 1).
    pub step: Step,
    /// Training loss of this step's batch, in nats per token (null when not finite).
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    pub lr: f64,
    pub tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mfu: Option<f64>,
    pub elapsed_s: f64,
    pub tokens_seen: u64,
    pub grad_norm: Option<f64>,
}

pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Opens `path` for appending, creating it if needed.
    pub fn append(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
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
