//! The library's error type. Every variant renders as one line that names the file or
//! flag at fault and, where there is one, what the user can do about it; the CLI prints
//! it as `error: …` and exits with code 1.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or config value that cannot work (`--n-embd 30 --n-head 4`).
    #[error("{flag}: {message}")]
    Config { flag: String, message: String },

    /// The corpus folder is missing, empty or too small.
    #[error("corpus {path}: {message}")]
    Corpus { path: PathBuf, message: String },

    /// A checkpoint that is missing, corrupt or does not fit the model.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Training produced non-finite losses or gradients too many times in a row.
    #[error("training diverged: {0}")]
    Diverged(String),

    /// Drawing or writing a PNG failed.
    #[error("{path}: cannot draw the picture: {message}")]
    Plot { path: PathBuf, message: String },

    /// Data-parallel training: a rank that cannot join, a peer that is gone, a
    /// collective that failed (the message says which rank and what to do).
    #[error("distributed training: {0}")]
    Distributed(String),

    /// An error from libtorch itself (shape mismatch, out of memory, …).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub fn config(flag: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            flag: flag.into(),
            message: message.into(),
        }
    }

    pub fn corpus(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Corpus {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
