//! From a folder of source files to batches of token windows.
//!
//! 1. [`discover`] lists the corpus: every `*.EXT` file under the root, recursively,
//!    sorted, so the same folder always gives the same list.
//! 2. [`split_by_file`] sends every 10th file to validation. Splitting by *file* (not by
//!    position in one long stream) keeps a file's text out of both sets, so validation
//!    loss measures generalisation to unseen files.
//! 3. [`TokenStreams::load_or_build`] tokenises each split into one stream, `<eos>` after
//!    each file, and caches it in the run folder keyed by a fingerprint of the files
//!    (`u16` per token on disk when the vocabulary fits, else `u32`). With
//!    `--tokenizer bpe`, [`bpe_for_corpus`] first trains the tokenizer on the training
//!    split (cached there too).
//! 4. [`Batches`] cuts `B` random windows of `T + 1` tokens out of the stream with one
//!    gather on the device: inputs are the first `T`, targets the last `T`.

use crate::tokenizer::{Bpe, TokenId, Tokenizer};
use crate::{Error, Result, Step};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Folders never read as corpus: caches, hidden folders (`.git`, `.venv`) and installed
/// third-party packages, which are not "the standard library" in the default corpus.
const SKIPPED_DIRS: [&str; 3] = ["__pycache__", "site-packages", "dist-packages"];

/// The Python standard library of the `python3` on PATH: the default corpus.
pub fn default_corpus_dir() -> Result<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .map_err(|e| {
            Error::config(
                "--data",
                format!("cannot run python3 to find the default corpus ({e}); pass --data DIR"),
            )
        })?;
    if !out.status.success() {
        return Err(Error::config(
            "--data",
            "python3 could not report its stdlib path; pass --data DIR",
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// All files ending in `.{ext}` under `root`, recursively, sorted by path.
pub fn discover(root: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    if !root.exists() {
        return Err(Error::corpus(
            root,
            "does not exist; pass --data with a folder of source files",
        ));
    }
    if !root.is_dir() {
        return Err(Error::corpus(
            root,
            "is not a folder; pass --data with a folder of source files",
        ));
    }
    let wanted = format!(".{ext}");
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    let walker = walker.filter_entry(|e| {
        let name = e.file_name().to_string_lossy();
        e.depth() == 0
            || !(name.starts_with('.')
                || (e.file_type().is_dir() && SKIPPED_DIRS.contains(&&*name)))
    });
    for entry in walker {
        // A folder we may not list is skipped like an unreadable file, not fatal.
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_file() && entry.file_name().to_string_lossy().ends_with(&wanted) {
            files.push(entry.into_path());
        }
    }
    if files.is_empty() && fs::read_dir(root).is_ok_and(|mut d| d.next().is_none()) {
        return Err(Error::corpus(
            root,
            "is empty; put source files in it or pass another --data",
        ));
    }
    if files.is_empty() {
        return Err(Error::corpus(
            root,
            format!("no *{wanted} files found; pass --data with a folder that has some (or --ext)"),
        ));
    }
    Ok(files)
}

/// Every 10th file (the 10th, 20th, …) goes to validation, the rest to training. With
/// fewer than 10 files the last one is the validation set; one file cannot be split.
pub fn split_by_file(root: &Path, files: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    if files.len() < 2 {
        return Err(Error::corpus(
            root,
            "has only one file; the split is per file, so add at least one more",
        ));
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, f) in files.iter().enumerate() {
        if i % 10 == 9 {
            val.push(f.clone())
        } else {
            train.push(f.clone())
        }
    }
    if val.is_empty() {
        val.push(train.pop().expect("at least two files"));
    }
    Ok((train, val))
}

/// What tokenising the corpus found, kept beside the cached streams and printed at start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CorpusReport {
    pub root: PathBuf,
    pub train_files: usize,
    pub val_files: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    /// UTF-8 bytes of the files, plus one per `<eos>`: the scale of bits per byte.
    pub train_bytes: usize,
    pub val_bytes: usize,
    /// Files with a NUL byte: not text.
    pub skipped_binary: usize,
    pub skipped_non_utf8: usize,
    pub skipped_unreadable: usize,
    /// Characters outside the vocabulary, each encoded as `<unk>`.
    pub unknown_chars: usize,
}

impl CorpusReport {
    pub fn summary(&self) -> String {
        let skipped = self.skipped_binary + self.skipped_non_utf8 + self.skipped_unreadable;
        format!(
            "corpus {}: {} train files ({} tokens, {:.2} bytes/token), {} val files ({} tokens); skipped {} (binary {}, non-UTF-8 {}, unreadable {}); {} chars outside the vocabulary → <unk>",
            self.root.display(), self.train_files, self.train_tokens, self.train_bytes_per_token(), self.val_files, self.val_tokens,
            skipped, self.skipped_binary, self.skipped_non_utf8, self.skipped_unreadable, self.unknown_chars
        )
    }
}

impl CorpusReport {
    /// Bytes per token of the training split (1 for ASCII text and the char tokenizer).
    pub fn train_bytes_per_token(&self) -> f64 {
        self.train_bytes as f64 / self.train_tokens.max(1) as f64
    }

    /// Bytes per token of the validation split: a loss in nats per token divided by
    /// this is nats per byte, the scale on which tokenizers compare.
    pub fn val_bytes_per_token(&self) -> f64 {
        self.val_bytes as f64 / self.val_tokens.max(1) as f64
    }
}

/// The tokenised train and validation splits.
pub struct TokenStreams {
    pub train: Vec<TokenId>,
    pub val: Vec<TokenId>,
    pub report: CorpusReport,
}

#[derive(Serialize, Deserialize)]
struct CacheManifest {
    fingerprint: String,
    report: CorpusReport,
}

impl TokenStreams {
    /// Tokenises the corpus, or reads the streams cached in `cache_dir` when the files
    /// (paths, sizes, modification times) and the tokenizer are unchanged.
    pub fn load_or_build(
        root: &Path,
        ext: &str,
        tokenizer: &Tokenizer,
        cache_dir: &Path,
    ) -> Result<Self> {
        let files = discover(root, ext)?;
        let fingerprint = fingerprint(&files, tokenizer);
        let manifest_path = cache_dir.join("manifest.json");
        let width = TokenWidth::for_vocab(tokenizer.vocab_size())?;
        let file = |split: &str| cache_dir.join(format!("{split}.{}", width.extension()));
        if let Ok(text) = fs::read_to_string(&manifest_path) {
            if let Ok(m) = serde_json::from_str::<CacheManifest>(&text) {
                if m.fingerprint == fingerprint {
                    if let (Ok(train), Ok(val)) =
                        (width.read(&file("train")), width.read(&file("val")))
                    {
                        if train.len() == m.report.train_tokens && val.len() == m.report.val_tokens
                        {
                            return Ok(TokenStreams {
                                train,
                                val,
                                report: m.report,
                            });
                        }
                    }
                }
            }
        }
        let streams = Self::build(root, &files, tokenizer)?;
        fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
        width.write(&file("train"), &streams.train)?;
        width.write(&file("val"), &streams.val)?;
        let manifest = CacheManifest {
            fingerprint,
            report: streams.report.clone(),
        };
        let json = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        fs::write(&manifest_path, json).map_err(|e| Error::io(&manifest_path, e))?;
        Ok(streams)
    }

    /// Tokenises without any cache. Files that are binary, not UTF-8 or unreadable are
    /// skipped and counted: one odd file should not stop a run over thousands.
    pub fn build(root: &Path, files: &[PathBuf], tokenizer: &Tokenizer) -> Result<Self> {
        let (train_files, val_files) = split_by_file(root, files)?;
        let mut report = CorpusReport {
            root: root.to_path_buf(),
            ..Default::default()
        };
        let mut encode_all = |paths: &[PathBuf]| {
            let mut stream = Vec::new();
            let (mut used, mut bytes, mut unknown) = (0, 0, 0);
            for text in read_texts(paths, &mut report) {
                let encoded = tokenizer.encode(&text);
                unknown += encoded.unknown;
                stream.extend_from_slice(&encoded.ids);
                stream.push(tokenizer.eos());
                used += 1;
                bytes += text.len() + 1;
            }
            report.unknown_chars += unknown;
            (stream, used, bytes)
        };
        let (train, n_train, train_bytes) = encode_all(&train_files);
        let (val, n_val, val_bytes) = encode_all(&val_files);
        report.train_files = n_train;
        report.val_files = n_val;
        report.train_tokens = train.len();
        report.val_tokens = val.len();
        report.train_bytes = train_bytes;
        report.val_bytes = val_bytes;
        if n_train == 0 || n_val == 0 {
            return Err(Error::corpus(
                root,
                format!(
                    "no readable text file in the {} split (skipped {} binary, {} non-UTF-8, {} unreadable); add UTF-8 source files",
                    if n_train == 0 { "training" } else { "validation" },
                    report.skipped_binary,
                    report.skipped_non_utf8,
                    report.skipped_unreadable
                ),
            ));
        }
        Ok(TokenStreams { train, val, report })
    }
}

impl TokenStreams {
    /// Both splits must hold at least one window of `block_size + 1` tokens; says which
    /// one does not, in terms of the corpus rather than of a libtorch index error.
    pub fn check_fits(&self, block_size: i64) -> Result<()> {
        for (split, len) in [
            ("training", self.train.len()),
            ("validation", self.val.len()),
        ] {
            if !holds_a_window(len, block_size) {
                return Err(Error::corpus(
                    &self.report.root,
                    format!("its {split} split has {len} tokens, less than one window of {} (--block-size {block_size} + 1); add files or use a smaller --block-size", block_size + 1),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `len` tokens hold one window: `block_size` inputs plus the target after the
/// last one.
fn holds_a_window(len: usize, block_size: i64) -> bool {
    len as i64 > block_size
}

/// FNV-1a over the file list, sizes, modification times and tokenizer: cheap to
/// recompute on every start, and any edit to the corpus invalidates the cache.
fn fingerprint(files: &[PathBuf], tokenizer: &Tokenizer) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    // The cache layout's version: a new one never reads an old manifest.
    feed(b"tokens v2");
    feed(&tokenizer.fingerprint_bytes());
    for f in files {
        feed(f.to_string_lossy().as_bytes());
        if let Ok(meta) = fs::metadata(f) {
            feed(&meta.len().to_le_bytes());
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            feed(&mtime.map(|d| d.as_nanos()).unwrap_or(0).to_le_bytes());
        }
    }
    format!("{h:016x}")
}

/// The integer a token takes in the cache on disk: the narrowest that holds every id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenWidth {
    U16,
    U32,
}

impl TokenWidth {
    /// u16 up to 65 536 ids, u32 beyond; more than u32 holds is an error on `--vocab-size`.
    pub fn for_vocab(vocab_size: i64) -> Result<Self> {
        if vocab_size <= 1 << 16 {
            Ok(TokenWidth::U16)
        } else if vocab_size <= 1 << 32 {
            Ok(TokenWidth::U32)
        } else {
            Err(Error::config(
                "--vocab-size",
                format!(
                    "{vocab_size} ids do not fit the token cache's 32-bit integers; use at most {}",
                    1u64 << 32
                ),
            ))
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            TokenWidth::U16 => "u16",
            TokenWidth::U32 => "u32",
        }
    }

    /// Little-endian, one integer per token.
    pub fn write(self, path: &Path, tokens: &[TokenId]) -> Result<()> {
        let mut bytes = Vec::with_capacity(tokens.len() * 4);
        for &t in tokens {
            match self {
                TokenWidth::U16 => bytes.extend_from_slice(&(t as u16).to_le_bytes()),
                TokenWidth::U32 => bytes.extend_from_slice(&t.to_le_bytes()),
            }
        }
        let mut f = fs::File::create(path).map_err(|e| Error::io(path, e))?;
        f.write_all(&bytes).map_err(|e| Error::io(path, e))
    }

    pub fn read(self, path: &Path) -> std::io::Result<Vec<TokenId>> {
        let bytes = fs::read(path)?;
        Ok(match self {
            TokenWidth::U16 => bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as TokenId)
                .collect(),
            TokenWidth::U32 => bytes
                .chunks_exact(4)
                .map(|c| TokenId::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        })
    }
}

/// The text of each readable UTF-8 file of `paths`, in order; binary, non-UTF-8 and
/// unreadable files are skipped and counted in `report`.
fn read_texts<'a>(
    paths: &'a [PathBuf],
    report: &'a mut CorpusReport,
) -> impl Iterator<Item = String> + 'a {
    paths.iter().filter_map(|path| {
        let Ok(bytes) = fs::read(path) else {
            report.skipped_unreadable += 1;
            return None;
        };
        if bytes.contains(&0) {
            report.skipped_binary += 1;
            return None;
        }
        let text = String::from_utf8(bytes).ok();
        if text.is_none() {
            report.skipped_non_utf8 += 1;
        }
        text
    })
}

/// The texts of the training split of the `*.{ext}` files under `root`: what a BPE is
/// trained on, so that validation files stay unseen by the tokenizer too.
pub fn training_texts(root: &Path, ext: &str) -> Result<Vec<String>> {
    let files = discover(root, ext)?;
    let (train, _) = split_by_file(root, &files)?;
    let texts: Vec<String> = read_texts(&train, &mut CorpusReport::default()).collect();
    if texts.is_empty() {
        return Err(Error::corpus(
            root,
            "no readable UTF-8 file in the training split; add source files",
        ));
    }
    Ok(texts)
}

/// A BPE of `vocab_size` ids for the corpus: read from `cache_dir/bpe-N.json` when it
/// was trained on the same files (paths, sizes, modification times), else trained on
/// the training split and written there.
pub fn bpe_for_corpus(root: &Path, ext: &str, vocab_size: i64, cache_dir: &Path) -> Result<Bpe> {
    crate::tokenizer::bpe::check_vocab_size(vocab_size)?;
    let files = discover(root, ext)?;
    let source = fingerprint(&files, &Tokenizer::default());
    let json = cache_dir.join(format!("bpe-{vocab_size}.json"));
    let stamp = cache_dir.join(format!("bpe-{vocab_size}.source"));
    if fs::read_to_string(&stamp).is_ok_and(|s| s == source) {
        if let Ok(bpe) = Bpe::load(&json) {
            return Ok(bpe);
        }
    }
    let bpe = Bpe::train(&training_texts(root, ext)?, vocab_size)?;
    fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
    bpe.save(&json)?;
    fs::write(&stamp, source).map_err(|e| Error::io(&stamp, e))?;
    Ok(bpe)
}

/// Random training windows, and fixed evaluation windows, cut from one token stream
/// that lives on the device as a single contiguous tensor.
pub struct Batches {
    /// (N,) int64, the whole split.
    tokens: Tensor,
    block_size: i64,
    batch_size: i64,
    seed: u64,
}

impl Batches {
    pub fn new(
        stream: &[TokenId],
        block_size: i64,
        batch_size: i64,
        seed: u64,
        device: Device,
    ) -> Result<Self> {
        if !holds_a_window(stream.len(), block_size) {
            return Err(Error::config(
                "--block-size",
                format!("{block_size} needs at least {} tokens per split but the corpus has {}; use a smaller --block-size or more data", block_size + 1, stream.len()),
            ));
        }
        let as_i64: Vec<i64> = stream.iter().map(|&t| t as i64).collect();
        let tokens = Tensor::from_slice(&as_i64).to(device);
        Ok(Batches {
            tokens,
            block_size,
            batch_size,
            seed,
        })
    }

    pub fn len(&self) -> i64 {
        self.tokens.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `micro`-th micro-batch of optimizer step `step`. It depends only on
    /// (seed, step, micro), never on what ran before, which is what makes a resumed run
    /// see exactly the batches an uninterrupted one would: no RNG state to save.
    /// Returns inputs and targets, both (B, T) int64.
    pub fn get(&self, step: Step, micro: u64) -> (Tensor, Tensor) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.seed
                ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ micro.wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        let max_start = self.len() - self.block_size - 1;
        let starts: Vec<i64> = (0..self.batch_size)
            .map(|_| rng.random_range(0..=max_start))
            .collect();
        self.windows(&starts)
    }

    /// The windows that begin at `starts`: inputs and targets, both (len(starts), T).
    pub fn windows(&self, starts: &[i64]) -> (Tensor, Tensor) {
        let device = self.tokens.device();
        let t = self.block_size;
        let starts = Tensor::from_slice(starts).to(device).unsqueeze(1); // (B, 1)
        let offsets = Tensor::arange(t + 1, (Kind::Int64, device)).unsqueeze(0); // (1, T+1)
        let window = self.tokens.take(&(starts + offsets)); // (B, T+1)
        (window.narrow(1, 0, t), window.narrow(1, 1, t))
    }

    /// `n` window starts spread evenly over the stream: the same windows at every
    /// evaluation, so validation losses compare across steps and runs.
    pub fn eval_starts(&self, n: i64) -> Vec<i64> {
        let max_start = self.len() - self.block_size - 1;
        let n = n.max(1);
        (0..n)
            .map(|i| if n == 1 { 0 } else { i * max_start / (n - 1) })
            .collect()
    }

    pub fn batch_size(&self) -> i64 {
        self.batch_size
    }
}
