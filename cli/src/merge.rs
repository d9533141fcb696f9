//! `edgecap merge`: the streaming merge engine as a command, a drop-in for
//! `mergecap -w OUT IN...` on capture shards.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use edgecap_merge::{MergeInput, MergeOptions, OutputFormat, WriteBehind, merge};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Pcap,
    Pcapng,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Output file (written to a temporary name, renamed when complete).
    #[arg(short = 'o', long = "output", visible_short_alias = 'w')]
    output: PathBuf,
    /// Output format: classic pcap (one link type) or pcapng (one interface per input interface).
    #[arg(long, value_enum, default_value = "pcap")]
    format: Format,
    /// Keep the packets before the damage in a malformed input, and report what was lost,
    /// instead of failing.
    #[arg(long)]
    salvage: bool,
    /// pcapng section comment (for example the capture id).
    #[arg(long)]
    comment: Option<String>,
    /// Input files (classic pcap or pcapng).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

/// A tuning variable: `default` when unset; set, a whole number in `least..=most`, or a usage
/// error naming it (a typo must not silently measure the default).
fn tuning(name: &str, default: usize, least: usize, most: usize) -> anyhow::Result<usize> {
    let Some(value) = std::env::var_os(name) else { return Ok(default) };
    let text = value.to_string_lossy();
    match text.trim().parse::<usize>() {
        Ok(n) if (least..=most).contains(&n) => Ok(n),
        _ => Err(crate::failure::usage(format!(
            "{name}: expected a whole number from {least} to {most}, got {text:?} (unset it for the default, {default})"
        ))),
    }
}

pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    // Small read buffers on purpose: the merge's time goes into copying bytes in and out of
    // them, and copies through buffers that stay in the CPU cache are much cheaper (measured
    // in docs/benchmarks.md: 32 KiB per input beat 1 MiB by up to 2x). Memory: 32 KiB per
    // input. The output is written by a thread of its own (the kernel's copy into the page
    // cache runs beside the merge), through WRITE_DEPTH buffers.
    let buffer = tuning("EDGECAP_MERGE_READ_BUFFER", 32 << 10, 4096, 64 << 20)?;
    let out_buffer = tuning("EDGECAP_MERGE_WRITE_BUFFER", 256 << 10, 4096, 256 << 20)?;
    let depth = tuning("EDGECAP_MERGE_WRITE_DEPTH", 4, 1, 1024)?;
    let mut inputs = Vec::with_capacity(args.inputs.len());
    for path in &args.inputs {
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        inputs.push(MergeInput {
            name: path.display().to_string(),
            reader: BufReader::with_capacity(buffer, file),
            provenance: None,
        });
    }
    let tmp = args.output.with_file_name(format!(
        ".{}.{}.tmp",
        args.output.file_name().and_then(|n| n.to_str()).unwrap_or("merge"),
        std::process::id()
    ));
    let file = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let out = WriteBehind::new(file, "merge-writer", out_buffer, depth).context("start the writer thread")?;
    let options = MergeOptions {
        format: Some(match args.format {
            Format::Pcap => OutputFormat::Pcap,
            Format::Pcapng => OutputFormat::PcapNg,
        }),
        salvage: args.salvage,
        comment: args.comment.clone(),
    };
    let result = merge(inputs, out, &options);
    let (out, report) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    let done = out.finish().context("write the output").and_then(|file| {
        file.sync_all().context("sync the output")?;
        std::fs::rename(&tmp, &args.output).with_context(|| format!("rename to {}", args.output.display()))
    });
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    for input in &report.inputs {
        if let Some(damage) = &input.damage {
            eprintln!("edgecap merge: {}: {damage}; kept the {} packets before it", input.name, input.packets);
        }
        if input.out_of_order > 0 {
            eprintln!(
                "edgecap merge: {}: {} packets were older than the packet before them in that file (kept in file order)",
                input.name, input.out_of_order
            );
        }
    }
    eprintln!(
        "edgecap merge: {} packets from {} inputs into {}",
        report.packets,
        report.inputs.len(),
        args.output.display()
    );
    Ok(())
}
