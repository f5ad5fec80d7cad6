//! `sympathy train`: flags to a [`TrainOptions`], Ctrl-C to a saved checkpoint, and the
//! run's outcome to an exit code; the training loop is [`sympathy::train`]'s.

use super::{override_fields, warn_if_no_fonts};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use sympathy::config::{
    Activation, Arch, ModelConfig, Normalization, NsPrecision, Optimizer, Positions, Preset,
    Schedule, TrainConfig,
};
use sympathy::data;
use sympathy::model::bits_per_byte;
use sympathy::run::checkpoint::{self, DataSpec};
use sympathy::run::lock::RunLock;
use sympathy::runtime::device::DeviceChoice;
use sympathy::see::plot;
use sympathy::tokenizer::{Bpe, Tokenizer};
use sympathy::train::ranks::{self, RankEnv};
use sympathy::train::{self, launch, StopCause, StopFlags, TrainOptions, TrainSummary};
use tch::Device;

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// Folder of source files [default: python3's stdlib, without site-packages].
    #[arg(long)]
    data: Option<PathBuf>,
    /// File extension of the corpus files.
    #[arg(long, default_value = "py")]
    ext: String,
    /// Run folder: checkpoints, metrics.jsonl, token cache.
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// Defaults for every model and training flag [default: small; with --resume, the
    /// checkpoint's].
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Continue the checkpoint in --out (model flags must then match it).
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Data-parallel workers, each on a slice of the batch with one thread: worth trying
    /// on a machine busy with other work (1 = libtorch's intra-op threads alone).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Data-parallel ranks on this machine, one process each, meeting through libtorch's
    /// c10d (Gloo on the CPU, NCCL on GPUs), as `torchrun --nproc-per-node N` would start
    /// them; torchrun itself works too (see docs/distributed.md).
    #[arg(long)]
    nproc: Option<usize>,
    /// Seconds the ranks wait for each other: to meet, and in every collective.
    #[arg(long, default_value_t = 300)]
    dist_timeout: u64,
    #[command(flatten)]
    tokenizer: TokenizerFlags,
    #[command(flatten)]
    model: ModelFlags,
    #[command(flatten)]
    train: TrainFlags,
}

/// Model shape overrides (unset = the preset's, or the checkpoint's with --resume).
#[derive(Args)]
pub(crate) struct ModelFlags {
    #[command(flatten)]
    pub(crate) shape: ShapeFlags,
    #[arg(long)]
    pub(crate) dropout: Option<f64>,
    #[command(flatten)]
    pub(crate) arch: ArchFlags,
}

impl ModelFlags {
    /// Sets the given flags in `cfg`.
    pub(crate) fn apply(&self, cfg: &mut ModelConfig) {
        self.shape.apply(cfg);
        override_fields!(cfg, self, [dropout]);
        self.arch.apply(&mut cfg.arch);
    }
}

/// The architecture options (unset = GPT-2's, or the checkpoint's with --resume).
#[derive(Args)]
pub(crate) struct ArchFlags {
    /// `gpt2`, or `modern`: all six options below at once; a flag beside it overrides it.
    #[arg(long, value_enum)]
    arch: Option<ArchChoice>,
    /// Positions: a learned table added to the tokens (GPT-2) or rotary q and k (RoPE).
    #[arg(long, value_enum)]
    pos: Option<Positions>,
    /// The norm of ln_1, ln_2 and ln_f.
    #[arg(long, value_enum)]
    norm: Option<Normalization>,
    /// RMSNorm over each head's queries and keys before their dot product.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    qk_norm: Option<bool>,
    /// The MLP's nonlinearity: GELU (GPT-2) or relu(x)².
    #[arg(long, value_enum)]
    mlp: Option<Activation>,
    /// A head matrix lm_head of its own, starting at zero, instead of reusing wte.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    untied_head: Option<bool>,
    /// attn.c_proj and mlp.c_proj start at zero: every block starts as the identity.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    zero_init: Option<bool>,
}

/// The values of `--arch`.
#[derive(Clone, Copy, ValueEnum)]
enum ArchChoice {
    /// GPT-2 as nanoGPT builds it.
    Gpt2,
    /// RoPE, RMSNorm, QK-norm, ReLU², an untied head and zero-init (the speedrun's).
    Modern,
}

impl ArchFlags {
    /// Sets the given options in `arch`: first `--arch`'s six, then each flag's own.
    pub(crate) fn apply(&self, arch: &mut Arch) {
        match self.arch {
            Some(ArchChoice::Gpt2) => *arch = Arch::default(),
            Some(ArchChoice::Modern) => *arch = Arch::modern(),
            None => {}
        }
        override_fields!(arch, self, [pos, norm, qk_norm, mlp, zero_init]);
        if let Some(untied) = self.untied_head {
            arch.tied_head = !untied;
        }
    }

    /// Whether any architecture flag was given.
    pub(crate) fn any(&self) -> bool {
        self.arch.is_some()
            || self.pos.is_some()
            || self.norm.is_some()
            || self.qk_norm.is_some()
            || self.mlp.is_some()
            || self.untied_head.is_some()
            || self.zero_init.is_some()
    }

    /// With --resume: the flags applied to the checkpoint's options must leave them as
    /// they are. Returns `(flag, given, saved)` for the first that would change one,
    /// naming the option's own flag, or `--arch` when that is what set it.
    fn contradiction(&self, saved: &Arch) -> Option<(&'static str, String, String)> {
        let mut wanted = saved.clone();
        self.apply(&mut wanted);
        let named = |own: bool, flag: &'static str| if own { flag } else { "--arch" };
        let text = |x: &dyn std::fmt::Display| x.to_string();
        [
            (
                named(self.pos.is_some(), "--pos"),
                text(&wanted.pos),
                text(&saved.pos),
            ),
            (
                named(self.norm.is_some(), "--norm"),
                text(&wanted.norm),
                text(&saved.norm),
            ),
            (
                named(self.qk_norm.is_some(), "--qk-norm"),
                text(&wanted.qk_norm),
                text(&saved.qk_norm),
            ),
            (
                named(self.mlp.is_some(), "--mlp"),
                text(&wanted.mlp),
                text(&saved.mlp),
            ),
            (
                named(self.untied_head.is_some(), "--untied-head"),
                text(&!wanted.tied_head),
                text(&!saved.tied_head),
            ),
            (
                named(self.zero_init.is_some(), "--zero-init"),
                text(&wanted.zero_init),
                text(&saved.zero_init),
            ),
        ]
        .into_iter()
        .find(|(_, want, have)| want != have)
    }
}

/// The model's size, shared by `train`, `inspect` (in [`ModelFlags`]) and `bench train`.
#[derive(Args)]
pub(crate) struct ShapeFlags {
    #[arg(long)]
    pub(crate) n_layer: Option<i64>,
    #[arg(long)]
    pub(crate) n_head: Option<i64>,
    #[arg(long)]
    pub(crate) n_embd: Option<i64>,
    /// Context length T.
    #[arg(long)]
    pub(crate) block_size: Option<i64>,
}

impl ShapeFlags {
    /// Sets the given flags in `cfg`.
    pub(crate) fn apply(&self, cfg: &mut ModelConfig) {
        override_fields!(cfg, self, [n_layer, n_head, n_embd, block_size]);
    }
}

/// Training overrides (unset = the preset's, or the checkpoint's with --resume).
#[derive(Args)]
pub(crate) struct TrainFlags {
    #[arg(long)]
    max_steps: Option<u64>,
    /// Stop after this many minutes of training (a checkpoint is written). On a new run
    /// it also selects `--schedule budget`, whose decay ends at this deadline.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Stop on quality: when an evaluation reaches this many validation bits per byte
    /// while the learning rate is at its peak, decay it from there (for 3/7 of the run
    /// so far) and stop. Needs the budget schedule.
    #[arg(long)]
    target_bpb: Option<f64>,
    /// The learning rate after warmup: `cosine` to --max-steps (exactly reproducible), or
    /// `budget`: stable, then a linear decay that ends at --max-steps or --max-minutes,
    /// whichever comes first [default: budget with --max-minutes, else cosine]
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    #[arg(long)]
    batch_size: Option<i64>,
    #[arg(long)]
    grad_accum: Option<i64>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long)]
    warmup_steps: Option<u64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    grad_clip: Option<f64>,
    /// What updates the blocks' weight matrices: `adamw`, or `muon` (orthogonalised
    /// momentum; embeddings, gains and biases stay AdamW's) [default: adamw; with
    /// --resume, the checkpoint's]
    #[arg(long, value_enum)]
    optimizer: Option<Optimizer>,
    /// Muon's peak learning rate; it follows --lr's schedule [default: 0.05]
    #[arg(long)]
    muon_lr: Option<f64>,
    /// Muon's (Nesterov) momentum [default: 0.95]
    #[arg(long)]
    muon_momentum: Option<f64>,
    /// The number format of Muon's Newton–Schulz products: `auto` is bf16 on CUDA and on
    /// CPUs with bf16 dot products (AVX512-BF16), f32 elsewhere [default: auto; with
    /// --resume, the checkpoint's]
    #[arg(long, value_enum)]
    muon_precision: Option<NsPrecision>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    eval_every: Option<u64>,
    #[arg(long)]
    eval_windows: Option<i64>,
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Stop at this step with a checkpoint, keeping the LR schedule of --max-steps; go on
    /// later with --resume.
    #[arg(long)]
    stop_at_step: Option<u64>,
}

pub(crate) fn cmd_train(args: TrainArgs) -> Result<i32> {
    let device = args.device.resolve()?;
    let rank_env = RankEnv::from_env(Duration::from_secs(args.dist_timeout))?;
    let writer = rank_env.as_ref().is_none_or(|r| r.rank == 0);
    let (mut model, mut tcfg, saved) = starting_configs(&args, writer)?;
    args.model.apply(&mut model);
    apply_train_flags(&args, &mut tcfg);
    if let Some(nproc) = args.nproc {
        if nproc == 0 {
            bail!("--nproc: must be at least 1");
        }
        if rank_env.is_some() {
            bail!("--nproc: this process is already a rank of a launched run (WORLD_SIZE is set); drop --nproc");
        }
        if nproc > 1 {
            ranks::check_divides(tcfg.batch_size, nproc)?;
            return Ok(launch::launch(nproc, &args_without_nproc())?);
        }
    }
    let device = match (&rank_env, device) {
        (Some(r), Device::Cuda(_)) => Device::Cuda(r.local_rank),
        _ => device,
    };
    let (saved_data, saved_tokenizer) = saved.unzip();
    let (data, ext) = match (args.data, saved_data) {
        (Some(d), _) => (d, args.ext),
        (None, Some(saved)) => (saved.root, saved.ext),
        (None, None) => (data::default_corpus_dir()?, args.ext),
    };
    let tokenizer = match saved_tokenizer {
        Some(t) => t,
        None => args.tokenizer.resolve(&data, &ext, &args.out)?,
    };
    model.vocab_size = tokenizer.vocab_size();
    let opts = TrainOptions {
        data,
        ext,
        out: args.out.clone(),
        model,
        train: tcfg,
        tokenizer,
        device,
        resume: args.resume,
        workers: args.workers,
        quiet: false,
        ranks: rank_env,
    };
    let summary = train::train(&opts, &stop_on_signals()?)?;
    if writer {
        report(&args.out, &summary);
    }
    Ok(exit_code(summary.cause))
}

/// What a run starts from: the model and training configs (the checkpoint's with
/// `--resume`, else the preset's), and with `--resume` the checkpoint's data source and
/// tokenizer.
type Start = (ModelConfig, TrainConfig, Option<(DataSpec, Tokenizer)>);

fn starting_configs(args: &TrainArgs, writer: bool) -> Result<Start> {
    if !args.resume {
        if checkpoint::resolve(&args.out).is_ok() {
            bail!("--out: {} already holds a checkpoint; pass --resume to continue it, or choose another --out", args.out.display());
        }
        let preset = args.preset.unwrap_or(Preset::Small);
        let model = preset.model(Tokenizer::default().vocab_size());
        return Ok((model, preset.train(), None));
    }
    if args.out.is_dir() && writer && args.nproc.is_none_or(|n| n == 1) {
        // A folder another process is training into says so first, before its
        // half-written state does; training takes the lock again for itself.
        drop(RunLock::acquire(&args.out)?);
    }
    let dir = checkpoint::resolve(&args.out)?;
    let state = checkpoint::read_state(&dir)?;
    check_resume_flags(args, &state.model)?;
    check_resume_optimizer(&args.train, &state.train)?;
    args.tokenizer.check_resume(&state.tokenizer)?;
    note_resume_changes(&args.train, &state.train);
    Ok((
        state.model,
        state.train,
        Some((state.data, state.tokenizer)),
    ))
}

/// Sets the training flags that were given in `tcfg`.
fn apply_train_flags(args: &TrainArgs, tcfg: &mut TrainConfig) {
    override_fields!(
        tcfg,
        args.train,
        [
            max_steps,
            batch_size,
            grad_accum,
            lr,
            min_lr,
            warmup_steps,
            weight_decay,
            grad_clip,
            optimizer,
            muon_lr,
            muon_momentum,
            muon_precision,
            seed,
            eval_every,
            eval_windows,
            checkpoint_every
        ]
    );
    if let Some(m) = args.train.max_minutes {
        tcfg.max_minutes = Some(m);
        if !args.resume {
            tcfg.schedule = Schedule::Budget;
        }
    }
    if let Some(schedule) = args.train.schedule {
        tcfg.schedule = schedule;
    }
    if let Some(t) = args.train.target_bpb {
        tcfg.target_bpb = Some(t);
    }
    tcfg.stop_at_step = args.train.stop_at_step;
}

/// A first Ctrl-C (or SIGTERM) sets a flag: the loop finishes its step and saves. A
/// second one finds the flag set and exits at once.
fn stop_on_signals() -> Result<StopFlags> {
    let flags = StopFlags::default();
    for (signal, flag, code) in [
        (signal_hook::consts::SIGINT, &flags.interrupt, 130),
        (signal_hook::consts::SIGTERM, &flags.terminate, 143),
    ] {
        signal_hook::flag::register_conditional_shutdown(signal, code, flag.clone())?;
        signal_hook::flag::register(signal, flag.clone())?;
    }
    Ok(flags)
}

/// The end of a run on stderr: the loss curves, where it got to, and how to go on.
fn report(out: &Path, summary: &TrainSummary) {
    // The loss curves are a bonus: a run that trained must not fail for a picture.
    let png = out.join("loss.png");
    warn_if_no_fonts();
    match plot::plot_runs(&[out.to_path_buf()], &png, plot::XAxis::Bytes) {
        Ok(()) => eprintln!("loss curves: {}", png.display()),
        Err(e) => eprintln!("warning: no loss curves: {e}"),
    }
    let val = summary
        .val_loss
        .map(|v| {
            format!(
                "val loss {v:.4} nats/token ({:.3} bits/byte)",
                bits_per_byte(v, summary.val_bytes_per_token)
            )
        })
        .unwrap_or_else(|| "no validation yet".into());
    eprintln!(
        "trained to step {} ({:.2}M tokens, {:.0} tok/s at the end), {val}; checkpoint {}",
        summary.step,
        summary.tokens_seen as f64 / 1e6,
        summary.tokens_per_s,
        summary.checkpoint.display()
    );
    let resume = format!("sympathy train --resume --out {}", out.display());
    match summary.cause {
        StopCause::MaxSteps | StopCause::MaxMinutes => {}
        StopCause::TargetReached => eprintln!(
            "stopped early: validation met --target-bpb, and the learning rate decayed after it"
        ),
        StopCause::StopAtStep => eprintln!(
            "stopped at step {} as --stop-at-step asked; continue with: {resume}",
            summary.step
        ),
        cause => {
            let signal = if cause == StopCause::Interrupted {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            eprintln!(
                "stopped by {signal} after step {}, checkpoint saved in {}; resume with: {resume}",
                summary.step,
                summary.checkpoint.display()
            );
        }
    }
}

/// The exit code for why training stopped: 0, or 128 + the signal that stopped it.
fn exit_code(cause: StopCause) -> i32 {
    match cause {
        StopCause::MaxSteps
        | StopCause::MaxMinutes
        | StopCause::TargetReached
        | StopCause::StopAtStep => 0,
        StopCause::Interrupted => 130,
        StopCause::Terminated => 143,
    }
}

/// This command line without `--nproc N` (or `--nproc=N`): what each rank runs.
fn args_without_nproc() -> Vec<OsString> {
    let mut out = vec![];
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--nproc" {
            args.next();
        } else if !arg.to_string_lossy().starts_with("--nproc=") {
            out.push(arg);
        }
    }
    out
}

/// With --resume, a model flag (or a --preset) may repeat the saved value but not
/// contradict it: the weights have the saved shape.
fn check_resume_flags(args: &TrainArgs, saved: &ModelConfig) -> Result<()> {
    if let Some(preset) = args.preset {
        // The command that started the run, with --resume added, must resume it: compare
        // the preset as the model flags modify it, not the bare preset.
        let mut wanted = preset.model(saved.vocab_size);
        args.model.apply(&mut wanted);
        if let Some((field, want, have)) = first_difference(&wanted, saved) {
            let name = preset.to_possible_value().expect("presets have names");
            bail!("--preset: {} gives {field} {want}, the checkpoint in {} has {have}; drop --preset to resume", name.get_name(), args.out.display());
        }
    }
    let m = &args.model;
    let changed = [
        differs("--n-layer", m.shape.n_layer, saved.n_layer),
        differs("--n-head", m.shape.n_head, saved.n_head),
        differs("--n-embd", m.shape.n_embd, saved.n_embd),
        differs("--block-size", m.shape.block_size, saved.block_size),
        differs("--dropout", m.dropout, saved.dropout),
        m.arch.contradiction(&saved.arch),
    ];
    if let Some((flag, given, saved)) = changed.into_iter().flatten().next() {
        bail!("{flag}: {given} contradicts the checkpoint's {saved}; drop the flag to resume, or train a new --out");
    }
    Ok(())
}

/// With --resume, `--optimizer` may repeat the checkpoint's but not change it: the
/// saved optimizer state is that optimizer's.
fn check_resume_optimizer(flags: &TrainFlags, saved: &TrainConfig) -> Result<()> {
    if let Some(given) = flags.optimizer.filter(|o| *o != saved.optimizer) {
        bail!(
            "--optimizer: {} contradicts the checkpoint's {}; drop the flag to resume, or train a new --out",
            given.name(),
            saved.optimizer.name()
        );
    }
    Ok(())
}

/// The first field in which two model configs differ, with both values as text.
fn first_difference(a: &ModelConfig, b: &ModelConfig) -> Option<(&'static str, String, String)> {
    let text = |x: &dyn std::fmt::Display| x.to_string();
    [
        ("n_layer", text(&a.n_layer), text(&b.n_layer)),
        ("n_head", text(&a.n_head), text(&b.n_head)),
        ("n_embd", text(&a.n_embd), text(&b.n_embd)),
        ("block_size", text(&a.block_size), text(&b.block_size)),
        ("vocab_size", text(&a.vocab_size), text(&b.vocab_size)),
        ("bias", text(&a.bias), text(&b.bias)),
        ("dropout", text(&a.dropout), text(&b.dropout)),
        ("pos", text(&a.arch.pos), text(&b.arch.pos)),
        ("norm", text(&a.arch.norm), text(&b.arch.norm)),
        ("qk_norm", text(&a.arch.qk_norm), text(&b.arch.qk_norm)),
        ("mlp", text(&a.arch.mlp), text(&b.arch.mlp)),
        (
            "tied_head",
            text(&a.arch.tied_head),
            text(&b.arch.tied_head),
        ),
        (
            "zero_init",
            text(&a.arch.zero_init),
            text(&b.arch.zero_init),
        ),
    ]
    .into_iter()
    .find(|(_, x, y)| x != y)
}

/// With --resume, training flags may change the run (a longer --max-steps, a lower --lr
/// after a divergence); each change is said once, since the run then no longer repeats
/// the uninterrupted one.
fn note_resume_changes(flags: &TrainFlags, saved: &TrainConfig) {
    let changed = [
        differs("--max-steps", flags.max_steps, saved.max_steps),
        differs("--batch-size", flags.batch_size, saved.batch_size),
        differs("--grad-accum", flags.grad_accum, saved.grad_accum),
        differs("--lr", flags.lr, saved.lr),
        differs("--min-lr", flags.min_lr, saved.min_lr),
        differs("--warmup-steps", flags.warmup_steps, saved.warmup_steps),
        differs("--weight-decay", flags.weight_decay, saved.weight_decay),
        differs("--grad-clip", flags.grad_clip, saved.grad_clip),
        differs("--muon-lr", flags.muon_lr, saved.muon_lr),
        differs("--muon-momentum", flags.muon_momentum, saved.muon_momentum),
        differs(
            "--muon-precision",
            flags.muon_precision,
            saved.muon_precision,
        ),
        differs("--seed", flags.seed, saved.seed),
    ];
    for (flag, given, saved) in changed.into_iter().flatten() {
        eprintln!("note: {flag} {given} replaces the checkpoint's {saved}; the resumed run will differ from an uninterrupted one");
    }
}

/// `(flag, given, saved)` as text when a flag was given with a value other than the
/// checkpoint's; shared by the resume checks so each compares in its own type.
fn differs<T: PartialEq + std::fmt::Display>(
    flag: &'static str,
    given: Option<T>,
    saved: T,
) -> Option<(&'static str, String, String)> {
    given
        .filter(|g| *g != saved)
        .map(|g| (flag, g.to_string(), saved.to_string()))
}

/// Which tokenizer a new run trains with.
#[derive(Args)]
pub(crate) struct TokenizerFlags {
    /// `char` (one id per ASCII character), `bpe` (byte-level BPE, trained on the
    /// training split first and cached in --out/tokens), or a tokenizer FILE.json
    /// (from `sympathy tokenizer train`). With --resume, the checkpoint's.
    #[arg(long, value_name = "char|bpe|FILE.json")]
    tokenizer: Option<String>,
    /// Vocabulary size of `--tokenizer bpe` (at least 258: 256 bytes + <eos> + <pad>).
    #[arg(long)]
    vocab_size: Option<i64>,
}

/// `--vocab-size` of `--tokenizer bpe` when none is given.
pub(crate) const DEFAULT_BPE_VOCAB: i64 = 2048;

impl TokenizerFlags {
    /// The tokenizer of a new run: char, a BPE trained on the corpus (or its cached
    /// copy), or the one in a file.
    fn resolve(
        &self,
        data: &std::path::Path,
        ext: &str,
        out: &std::path::Path,
    ) -> Result<Tokenizer> {
        match (self.tokenizer.as_deref().unwrap_or("char"), self.vocab_size) {
            ("char", None) => Ok(Tokenizer::default()),
            ("char", Some(_)) => bail!("--vocab-size: the char tokenizer's vocabulary is fixed; use it with --tokenizer bpe"),
            ("bpe", n) => {
                let n = n.unwrap_or(DEFAULT_BPE_VOCAB);
                let start = std::time::Instant::now();
                let bpe = data::bpe_for_corpus(data, ext, n, &out.join("tokens"))?;
                eprintln!("tokenizer: byte-level BPE of {n} ids, trained on the training split ({:.1} s; cached in {})", start.elapsed().as_secs_f64(), out.join("tokens").display());
                Ok(Tokenizer::Bpe(bpe))
            }
            (file, n) => {
                let path = std::path::Path::new(file);
                if !path.is_file() {
                    bail!("--tokenizer: {file} is neither char, bpe nor a tokenizer file; train one with `sympathy tokenizer train --out {file}`");
                }
                let bpe = Bpe::load(path)?;
                if let Some(n) = n.filter(|&n| n != bpe.vocab_size()) {
                    bail!("--vocab-size: {n} contradicts {file}, which has {} ids; drop --vocab-size", bpe.vocab_size());
                }
                Ok(Tokenizer::Bpe(bpe))
            }
        }
    }

    /// With --resume the tokenizer is the checkpoint's: a flag may repeat it, not change it.
    fn check_resume(&self, saved: &Tokenizer) -> Result<()> {
        let kind_differs = self
            .tokenizer
            .as_deref()
            .is_some_and(|t| (t == "char" || t == "bpe") && t != saved.name());
        let size_differs = self.vocab_size.is_some_and(|n| n != saved.vocab_size());
        if kind_differs || size_differs {
            bail!("--tokenizer: the checkpoint was trained with {}; drop --tokenizer and --vocab-size to resume", saved.label());
        }
        Ok(())
    }
}
