//! `sympathy inspect`, `sympathy explain` and `sympathy plot`: looking at a model and its
//! runs ([`sympathy::see::inspect`], [`sympathy::see::explain`], [`sympathy::see::plot`]).

use super::train::ModelFlags;
use super::warn_if_no_fonts;
use anyhow::{bail, Result};
use clap::{ArgGroup, Args};
use std::path::PathBuf;
use sympathy::config::Preset;
use sympathy::infer::generate;
use sympathy::run::checkpoint;
use sympathy::runtime::device::DeviceChoice;
use sympathy::see::{explain, inspect, plot};
use sympathy::tokenizer::Tokenizer;

#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["checkpoint", "preset"])))]
pub(crate) struct InspectArgs {
    /// A run folder or a checkpoint folder.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// A preset before training; the model flags below change its shape.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    #[command(flatten)]
    model: ModelFlags,
    /// Windows per step for the memory estimate [default: the run's or preset's].
    #[arg(long)]
    batch_size: Option<i64>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct ExplainArgs {
    /// A run folder or a checkpoint folder.
    #[arg(long, default_value = "runs/default")]
    checkpoint: PathBuf,
    #[arg(long)]
    prompt: String,
    /// Folder for the attention maps (PNG); without it only the tables are printed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Predictions shown per position.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Show only the last N positions in the table.
    #[arg(long)]
    last: Option<usize>,
    /// Draw only this layer (0-based).
    #[arg(long)]
    layer: Option<i64>,
    /// With --layer: one large map of this head (0-based).
    #[arg(long, requires = "layer")]
    head: Option<i64>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
pub(crate) struct PlotArgs {
    /// Run folders with a metrics.jsonl; several are drawn on one chart.
    #[arg(required = true, value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// The PNG to write [default: RUN_DIR/loss.png for one run, loss.png for several].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The lower chart's x axis: bytes seen (compares tokenizers), tokens seen, or
    /// training time (compares runs of equal wall-clock budget).
    #[arg(long, value_enum, default_value = "bytes")]
    by: plot::XAxis,
}

pub(crate) fn cmd_inspect(args: InspectArgs) -> Result<()> {
    let cpu = tch::Device::Cpu;
    let (source, cfg, vs, tcfg, state) = if let Some(path) = &args.checkpoint {
        let m = &args.model;
        for (flag, given) in [
            ("--n-layer", m.shape.n_layer.is_some()),
            ("--n-head", m.shape.n_head.is_some()),
            ("--n-embd", m.shape.n_embd.is_some()),
            ("--dropout", m.dropout.is_some()),
            ("--arch (and --pos, --norm, …)", m.arch.any()),
        ] {
            if given {
                bail!("{flag}: a checkpoint's shape is fixed; use it with --preset instead");
            }
        }
        let loaded = checkpoint::load(path, cpu)?;
        let state = loaded.state;
        (
            loaded.dir.display().to_string(),
            state.model.clone(),
            loaded.vs,
            state.train.clone(),
            Some((state, loaded.dir)),
        )
    } else {
        let preset = args.preset.expect("clap requires --checkpoint or --preset");
        let mut cfg = preset.model(Tokenizer::default().vocab_size());
        args.model.apply(&mut cfg);
        cfg.validate()?;
        sympathy::memory::check_fits(&cfg, sympathy::memory::Use::Build, true)?;
        let vs = tch::nn::VarStore::new(cpu);
        let _model = sympathy::model::Gpt::new(&vs.root(), &cfg);
        let name = format!("{preset:?}").to_lowercase();
        (
            format!("preset {name} (untrained)"),
            cfg,
            vs,
            preset.train(),
            None,
        )
    };
    // With a checkpoint, --block-size is the sequence length of the estimates.
    let seq_len = args.model.shape.block_size.unwrap_or(cfg.block_size);
    let batch = args.batch_size.unwrap_or(tcfg.batch_size);
    let state_ref = state.as_ref().map(|(s, dir)| (s, dir.clone()));
    let report = inspect::report(source, &cfg, &vs, batch, seq_len, state_ref)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", inspect::render(&report));
    }
    Ok(())
}

pub(crate) fn cmd_explain(args: ExplainArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let loaded = checkpoint::load(&args.checkpoint, device)?;
    let cfg = loaded.state.model.clone();
    if let Some(l) = args.layer {
        if l < 0 || l >= cfg.n_layer {
            bail!(
                "--layer: {l} is out of range; the model has layers 0..{}",
                cfg.n_layer - 1
            );
        }
    }
    if let Some(h) = args.head {
        if h < 0 || h >= cfg.n_head {
            bail!(
                "--head: {h} is out of range; the model has heads 0..{}",
                cfg.n_head - 1
            );
        }
    }
    let tokenizer = loaded.state.tokenizer.clone();
    let prepared = generate::prepare_prompt(&tokenizer, &args.prompt, cfg.block_size);
    for note in &prepared.notes {
        eprintln!("{note}");
    }
    let e = explain::explain(
        &loaded.model,
        &tokenizer,
        &prepared.ids,
        args.top_k,
        args.last,
    )?;
    // The window the model saw (the prompt may have been cut to the context), for titles.
    let seen: Vec<char> = tokenizer.decode(&prepared.ids).chars().collect();
    let seen: String = match seen.len() {
        n if n > 48 => format!("…{}", seen[n - 47..].iter().collect::<String>()),
        _ => seen.iter().collect(),
    };
    print!("{}", explain::render(&e));
    let Some(out) = &args.out else {
        eprintln!("(add --out DIR for the attention maps as PNG)");
        return Ok(());
    };
    std::fs::create_dir_all(out)
        .map_err(|err| anyhow::anyhow!("--out {}: {err}", out.display()))?;
    warn_if_no_fonts();
    let layers: Vec<i64> = match args.layer {
        Some(l) => vec![l],
        None => (0..cfg.n_layer).collect(),
    };
    for l in layers {
        let att = &e.attention[l as usize]; // (H, T, T)
        let path = match args.head {
            Some(h) => {
                let path = out.join(format!("attention-layer{l}-head{h}.png"));
                let title =
                    format!("layer {l}, head {h}: attention over {seen:?} (white 0 to dark blue 1, √ scale)");
                plot::attention_map(&path, &att.get(h), &e.labels, &title)?;
                path
            }
            None => {
                let path = out.join(format!("attention-layer{l}.png"));
                let title = format!(
                    "layer {l}: attention over {seen:?} (row attends to column; grey: masked; √ scale)"
                );
                plot::attention_grid(&path, att, &e.labels, &title)?;
                path
            }
        };
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

pub(crate) fn cmd_plot(args: PlotArgs) -> Result<()> {
    let out = match (&args.out, args.runs.as_slice()) {
        (Some(out), _) => out.clone(),
        (None, [one]) => one.join("loss.png"),
        (None, _) => PathBuf::from("loss.png"),
    };
    warn_if_no_fonts();
    plot::plot_runs(&args.runs, &out, args.by)?;
    println!("{}", out.display());
    Ok(())
}
