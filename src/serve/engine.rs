//! The inference thread and its batcher: the one place that touches the model.
//!
//! tch tensors are `Send` but not `Sync`, so one thread owns the model and everything
//! else talks to it through a bounded queue ([`EngineHandle`]): an HTTP handler sends a
//! [`GenJob`] per completion and receives its tokens as [`Event`]s on a channel of its
//! own. The queue's bound is the back-pressure: when it is full a request is refused
//! with 429 at once instead of waiting without limit.
//!
//! **Continuous batching.** Every loop of the inference thread:
//! 1. *join*: while a row of the [`SlotCache`] is free, take a job from the queue and
//!    prefill its prompt alone (B = 1, exactly as `generate` does), which leaves the
//!    logits of its first token and a one-row cache that is copied into the free row;
//! 2. *sample*: every row draws its next token from its own logits with its own seeded
//!    [`Sampler`] (as `generate` does), so a request's text does not depend on who else
//!    is in the batch; rows that finished, whose client went away, or that ran out of
//!    time *leave* (their cache row is reused at once);
//! 3. *decode*: one [`Gpt::decode_rows`] step advances all remaining rows together,
//!    each at its own position.
//!
//! A client that disconnects drops its receiver; step 2 sees the closed channel and the
//! row leaves before the next decode, so generation stops within one step.

use super::errors::ServeError;
use crate::infer::generate::context_shift_keep;
use crate::infer::sampling::{ranked, Sampler, SamplingConfig};
use crate::infer::stop_strings::StopMatcher;
use crate::model::{Gpt, KvCache, SlotCache};
use crate::runtime::torch_ext::InferenceMode;
use crate::tokenizer::{TokenId, Tokenizer, EOS};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tokio::sync::{mpsc, oneshot};

/// What one completion asks for (shared by the `n` completions of a request).
#[derive(Clone, Debug)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Report each sampled token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// Also score the prompt's tokens (`echo` with `logprobs`).
    pub score_prompt: bool,
    /// Past this instant the completion is cut off with [`ServeError::Timeout`].
    pub deadline: Instant,
    /// The limit that `deadline` came from (`--timeout-s`), for the message.
    pub timeout_s: u64,
}

/// One completion to make: choice `index` of a request.
pub struct GenJob {
    pub index: usize,
    /// The prompt's ids, already fitted to the context (`prepare_prompt`).
    pub prompt: Vec<TokenId>,
    pub seed: u64,
    pub params: Arc<GenParams>,
    /// Where its events go, tagged with `index`; closed when the client is gone.
    pub events: mpsc::UnboundedSender<(usize, Event)>,
}

/// A token's log-probability under the model (the softmax of its raw logits, before
/// temperature, penalty or truncation: what `explain` shows) and the most likely
/// alternatives at that position, most likely first.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: TokenId,
    pub logprob: f64,
    pub top: Vec<(TokenId, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `<eos>` or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the engine tells a request, in order: `Prompt` (only when scoring the prompt),
/// one `Token` per sampled token, then `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// Per prompt token, its score given the tokens before it (none for the first).
    Prompt(Vec<Option<TokenLogprob>>),
    /// A sampled token and the text it released (empty while a possible stop string or
    /// an incomplete character is held back).
    Token {
        id: TokenId,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The end: text still held back, and how many tokens were generated.
    Done {
        text: String,
        finish: FinishReason,
        completion_tokens: usize,
    },
    Failed(ServeError),
}

type Work = Box<dyn FnOnce(&Gpt, &Tokenizer) + Send>;

enum Job {
    Generate(GenJob),
    Work(Work),
    /// Another model of the same shape (the web page's "load the newest checkpoint").
    Replace(Box<Gpt>, oneshot::Sender<()>),
    Shutdown,
}

/// Counters for `GET /metrics`, written by the engine and the router.
#[derive(Debug, Default)]
pub struct Metrics {
    pub http_requests: AtomicU64,
    pub http_errors: AtomicU64,
    pub completions: AtomicU64,
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub decode_steps: AtomicU64,
    /// Microseconds spent in decode steps.
    pub decode_us: AtomicU64,
    /// Rows in the last decode step.
    pub batch_size: AtomicU64,
}

/// The handlers' side of the engine: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
    max_queue: usize,
    pub metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
}

impl EngineHandle {
    /// Queues all `jobs` or none: a request's `n` completions start together.
    pub fn submit(&self, jobs: Vec<GenJob>) -> Result<(), ServeError> {
        if self.stopping.load(Relaxed) {
            return Err(ServeError::ShuttingDown);
        }
        let permits = self.tx.try_reserve_many(jobs.len()).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServeError::QueueFull(self.queue_depth()),
            mpsc::error::TrySendError::Closed(_) => ServeError::ShuttingDown,
        })?;
        for (permit, job) in permits.zip(jobs) {
            permit.send(Job::Generate(job));
        }
        Ok(())
    }

    /// Runs `f` on the inference thread between two decode steps and returns its result:
    /// how the web page's views read the model without a second copy of it.
    pub async fn with_model<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Gpt, &Tokenizer) -> R + Send + 'static,
    ) -> Result<R, ServeError> {
        if self.stopping.load(Relaxed) {
            return Err(ServeError::ShuttingDown);
        }
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |model, tokenizer| {
            let result = catch_unwind(AssertUnwindSafe(|| f(model, tokenizer)));
            let _ = tx.send(result.map_err(|_| ()));
        });
        self.tx.try_send(Job::Work(work)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServeError::QueueFull(self.queue_depth()),
            mpsc::error::TrySendError::Closed(_) => ServeError::ShuttingDown,
        })?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(())) => Err(ServeError::Internal("the model work failed".into())),
            Err(_) => Err(ServeError::ShuttingDown),
        }
    }

    /// Swaps in `model` (same config and tokenizer as the one served) between two
    /// decode steps. Completions in flight end with an error event: their cached keys
    /// and values belong to the old weights.
    pub async fn replace_model(&self, model: Gpt) -> Result<(), ServeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Job::Replace(Box::new(model), tx))
            .await
            .map_err(|_| ServeError::ShuttingDown)?;
        rx.await.map_err(|_| ServeError::ShuttingDown)
    }

    /// Jobs waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.max_queue - self.tx.capacity()
    }

    /// Stops taking requests; in-flight ones end with a final error event, then the
    /// engine thread exits.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Relaxed);
        let _ = self.tx.send(Job::Shutdown).await;
    }
}

/// How the engine runs.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Rows in the batch at most (requests decoded together).
    pub max_batch: usize,
    /// Jobs waiting beyond those at most; more are refused with 429.
    pub max_queue: usize,
    /// libtorch's intra-op threads on the inference thread. libtorch's setting is per
    /// thread, so the engine sets it itself; `None` leaves one core to the HTTP side
    /// (the cores libtorch would use, less one, at least one).
    pub threads: Option<i32>,
}

/// Starts the inference thread, which owns `model` from now on.
pub fn start(
    model: Gpt,
    tokenizer: Tokenizer,
    cfg: EngineConfig,
) -> (EngineHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(cfg.max_queue.max(1));
    let metrics = Arc::new(Metrics::default());
    let handle = EngineHandle {
        tx,
        max_queue: cfg.max_queue.max(1),
        metrics: metrics.clone(),
        stopping: Arc::new(AtomicBool::new(false)),
    };
    let block = model.config().block_size;
    let n_layer = model.config().n_layer as usize;
    let engine = Engine {
        cache: SlotCache::new(n_layer, cfg.max_batch as i64, block),
        max_batch: cfg.max_batch as i64,
        threads: cfg.threads,
        model,
        tokenizer,
        rx,
        rows: Vec::new(),
        metrics,
        stopping: handle.stopping.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || engine.run())
        .expect("the inference thread starts");
    (handle, thread)
}

/// One completion in the batch: row `r` of `Engine::rows` is row `r` of the cache.
struct Row {
    job: GenJob,
    sampler: Sampler,
    stops: StopMatcher,
    /// Prompt and generated tokens: the penalty's history and the source of a shift.
    context: Vec<TokenId>,
    generated: Vec<TokenId>,
    /// Bytes of `decode(generated)` already handed to `stops`.
    released: usize,
    /// The logits (V,) of the position after `context`.
    logits: Vec<f32>,
    /// Tokens added by the last `sample` (0 or 1), for the metrics.
    sampled: usize,
    /// Whether a stop string ended it (then nothing held back is shown).
    stopped: bool,
}

struct Engine {
    model: Gpt,
    tokenizer: Tokenizer,
    rx: mpsc::Receiver<Job>,
    cache: SlotCache,
    max_batch: i64,
    threads: Option<i32>,
    rows: Vec<Row>,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
}

impl Engine {
    fn run(mut self) {
        let _inference = InferenceMode::enter(); // no autograd bookkeeping on this thread
        tch::set_num_threads(
            self.threads
                .unwrap_or_else(|| (tch::get_num_threads() - 1).max(1)),
        );
        while !self.stopping.load(Relaxed) {
            // Join: wait for work when idle, else take what is queued while rows are free.
            if self.rows.is_empty() {
                match self.rx.blocking_recv() {
                    Some(job) => self.admit(job),
                    None => break,
                }
            }
            while self.cache.has_room() && !self.stopping.load(Relaxed) {
                match self.rx.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => break,
                }
            }
            if self.rows.is_empty() || self.stopping.load(Relaxed) {
                continue;
            }
            if catch_unwind(AssertUnwindSafe(|| self.step())).is_err() {
                // A libtorch error mid-step: the rows' cache state is unknown.
                self.fail_all(|| ServeError::Internal("a decode step failed".into()));
            }
        }
        self.fail_all(|| ServeError::ShuttingDown);
        self.rx.close();
        while let Ok(job) = self.rx.try_recv() {
            if let Job::Generate(job) = job {
                let _ = job
                    .events
                    .send((job.index, Event::Failed(ServeError::ShuttingDown)));
            }
        }
    }

    /// Every row leaves with the error `make()`; the cache starts afresh.
    fn fail_all(&mut self, make: impl Fn() -> ServeError) {
        for row in self.rows.drain(..) {
            let _ = row.job.events.send((row.job.index, Event::Failed(make())));
        }
        let cfg = self.model.config();
        self.cache = SlotCache::new(cfg.n_layer as usize, self.max_batch, cfg.block_size);
    }

    fn admit(&mut self, job: Job) {
        match job {
            Job::Work(work) => work(&self.model, &self.tokenizer),
            Job::Replace(model, done) => {
                self.model = *model;
                self.fail_all(|| {
                    ServeError::Internal(
                        "the server switched to another checkpoint mid-completion; run it again"
                            .into(),
                    )
                });
                let _ = done.send(());
            }
            Job::Shutdown => self.stopping.store(true, Relaxed),
            Job::Generate(job) if job.events.is_closed() => {
                self.metrics.cancelled.fetch_add(1, Relaxed);
            }
            Job::Generate(job) => {
                let (index, events) = (job.index, job.events.clone());
                if catch_unwind(AssertUnwindSafe(|| self.join(job))).is_err() {
                    let error = ServeError::Internal("the prefill failed".into());
                    let _ = events.send((index, Event::Failed(error)));
                }
            }
        }
    }

    /// Prefills `job`'s prompt alone and adds it to the batch.
    fn join(&mut self, job: GenJob) {
        let mut kv = KvCache::new(self.model.config().n_layer as usize, self.cache.capacity());
        let logits = self
            .model
            .forward_cached(&ids_tensor(&job.prompt, self.model.device()), &mut kv); // (1, T, V)
        let params = job.params.clone();
        // Every position's logits when scoring the prompt, else only the last one's.
        let t = job.prompt.len() as i64;
        let from = if params.score_prompt { 0 } else { t - 1 };
        let all = logits_rows(&logits.get(0).narrow(0, from, t - from)); // rows of V
        if params.score_prompt {
            let k = params.logprobs.unwrap_or(0);
            let scores = std::iter::once(None)
                .chain(
                    job.prompt[1..]
                        .iter()
                        .zip(&all)
                        .map(|(&id, l)| Some(score(l, id, k))),
                ) // row t scores token t + 1
                .collect();
            let _ = job.events.send((job.index, Event::Prompt(scores)));
        }
        self.metrics
            .prompt_tokens
            .fetch_add(job.prompt.len() as u64, Relaxed);
        self.cache.push_row(&kv);
        self.rows.push(Row {
            sampler: Sampler::new(params.sampling.clone(), job.seed),
            stops: StopMatcher::new(&params.stop),
            context: job.prompt.clone(),
            generated: Vec::new(),
            released: 0,
            sampled: 0,
            stopped: false,
            logits: all.last().cloned().expect("the prompt is not empty"),
            job,
        });
    }

    /// Sample every row, let finished ones leave, then one decode step for the rest.
    fn step(&mut self) {
        let now = Instant::now();
        for r in (0..self.rows.len()).rev() {
            // Rows after r were handled already, so the one swapped into r is done.
            let row = &mut self.rows[r];
            let leaves = if row.job.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Relaxed);
                true
            } else if now > row.job.params.deadline {
                row.send(Event::Failed(ServeError::Timeout(row.job.params.timeout_s)));
                true
            } else {
                let finish = row.sample(&self.tokenizer);
                self.metrics
                    .completion_tokens
                    .fetch_add(row.sampled as u64, Relaxed);
                if let Some(finish) = finish {
                    row.finish(finish, &self.tokenizer);
                    self.metrics.completions.fetch_add(1, Relaxed);
                }
                finish.is_some()
            };
            if leaves {
                self.rows.swap_remove(r);
                self.cache.swap_remove(r);
            }
        }
        if self.rows.is_empty() {
            return;
        }
        self.shift_full_rows();
        let tokens: Vec<i64> = self
            .rows
            .iter()
            .map(|r| *r.context.last().expect("never empty") as i64)
            .collect();
        let started = Instant::now();
        let logits = self.model.decode_rows(&tokens, &mut self.cache); // (B, V)
        for (row, l) in self.rows.iter_mut().zip(logits_rows(&logits)) {
            row.logits = l;
        }
        let us = started.elapsed().as_micros() as u64;
        self.metrics.decode_us.fetch_add(us, Relaxed);
        self.metrics.decode_steps.fetch_add(1, Relaxed);
        self.metrics.batch_size.store(tokens.len() as u64, Relaxed);
    }

    /// Rows whose cache is full keep the newest half of their window, as `generate`
    /// does (a context shift): all but the newest token are prefilled again, and the
    /// decode step adds the newest.
    fn shift_full_rows(&mut self) {
        let capacity = self.cache.capacity();
        for r in 0..self.rows.len() {
            if self.cache.lens()[r] < capacity {
                continue;
            }
            let context = &self.rows[r].context;
            let keep = context_shift_keep(capacity);
            let kept = &context[context.len() - keep..context.len() - 1];
            let mut kv = KvCache::new(self.model.config().n_layer as usize, capacity);
            if !kept.is_empty() {
                let _ = self
                    .model
                    .forward_cached(&ids_tensor(kept, self.model.device()), &mut kv);
            }
            self.cache.refill_row(r, &kv);
        }
    }
}

impl Row {
    fn send(&self, event: Event) {
        let _ = self.job.events.send((self.job.index, event));
    }

    /// Draws the next token from `logits` and sends it; the reason to finish, if any.
    /// The same decisions in the same order as `generate`'s rows make.
    fn sample(&mut self, tokenizer: &Tokenizer) -> Option<FinishReason> {
        self.sampled = 0;
        let params = self.job.params.clone();
        if self.generated.len() >= params.max_tokens {
            return Some(FinishReason::Length); // max_tokens 0
        }
        let next = if params.ignore_eos {
            let mut banned = self.logits.clone();
            if let Some(l) = banned.get_mut(EOS as usize) {
                *l = f32::NEG_INFINITY;
            }
            self.sampler.sample(&banned, &self.context)
        } else {
            self.sampler.sample(&self.logits, &self.context)
        };
        if next == EOS {
            return Some(FinishReason::Stop);
        }
        let logprob = params.logprobs.map(|k| score(&self.logits, next, k));
        self.generated.push(next);
        self.context.push(next);
        self.sampled = 1;
        let piece = self.release(tokenizer, false);
        let (text, stopped) = self.stops.push(&piece);
        let max_tokens = params.max_tokens;
        self.send(Event::Token {
            id: next,
            text,
            logprob,
        });
        self.stopped = stopped;
        if stopped {
            Some(FinishReason::Stop)
        } else if self.generated.len() == max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }

    /// New text of the generated tokens: all of them decoded, minus what was released
    /// before. A trailing U+FFFD (an incomplete UTF-8 sequence of a byte-level
    /// tokenizer) waits for the next token unless this is the end.
    fn release(&mut self, tokenizer: &Tokenizer, last: bool) -> String {
        let text = tokenizer.decode(&self.generated);
        let new = text.get(self.released..).unwrap_or_default();
        let new = if last {
            new
        } else {
            new.trim_end_matches('\u{FFFD}')
        };
        self.released += new.len();
        new.to_string()
    }

    /// Sends `Done` with whatever text was still held back.
    fn finish(&mut self, mut finish: FinishReason, tokenizer: &Tokenizer) {
        let mut text = String::new();
        if !self.stopped {
            let rest = self.release(tokenizer, true);
            let (out, stopped) = self.stops.push(&rest);
            text = out;
            if stopped {
                finish = FinishReason::Stop;
            } else {
                text.push_str(&self.stops.flush());
            }
        }
        let completion_tokens = self.generated.len();
        self.send(Event::Done {
            text,
            finish,
            completion_tokens,
        });
    }
}

/// Token ids -> (1, T) on `device`.
fn ids_tensor(ids: &[TokenId], device: Device) -> Tensor {
    let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_slice(&ids).to(device).unsqueeze(0) // (T,) -> (1, T)
}

/// Logits (N, V) -> N rows of V fp32 values on the CPU.
fn logits_rows(logits: &Tensor) -> Vec<Vec<f32>> {
    let v = logits.size()[1] as usize;
    let flat = logits
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .contiguous()
        .view([-1]);
    let flat = Vec::<f32>::try_from(flat).expect("float logits");
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

/// `id`'s log-probability under logits (V,) (a log-softmax in f64) and the `k` most
/// likely tokens with theirs.
pub fn score(logits: &[f32], id: TokenId, k: usize) -> TokenLogprob {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let log_sum = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    let logprob = |i: usize| logits[i] as f64 - log_sum;
    let top = ranked(logits)
        .into_iter()
        .take(k)
        .map(|i| (i as TokenId, logprob(i)))
        .collect();
    TokenLogprob {
        id,
        logprob: logprob(id as usize),
        top,
    }
}
