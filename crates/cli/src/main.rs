//! `ikukantai`: the one binary of the ikukantai serverless platform.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ikukantai_api::config::FleetConfig;
use ikukantai_api::parse::load;
use ikukantai_policy::registry;

/// ikukantai (行く艦隊): a latency-aware serverless platform for edge–cloud fleets.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check manifests (Knative Services, config ConfigMaps) and topologies offline.
    ///
    /// Reads YAML (multi-document) or JSON. Every problem is printed with its file, document,
    /// field path and rule; the exit code is 1 if there is any.
    Validate {
        /// Files to check (`-` reads standard input). Repeatable.
        #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
        files: Vec<String>,
    },
    /// List the load balancers, placements and queue disciplines that annotations can name.
    Policies,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { files } => validate(&files),
        Command::Policies => {
            policies();
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn read_source(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))
    }
}

fn validate(files: &[String]) -> anyhow::Result<ExitCode> {
    let mut sources = Vec::new();
    for f in files {
        sources.push((f.clone(), read_source(f)?));
    }
    match load(&sources, &FleetConfig::new()) {
        Ok((docs, _)) => {
            for d in &docs {
                println!("ok: {}: document {} ({})", d.file, d.index, d.document.subject());
            }
            println!("{} document(s) valid", docs.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found", problems.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn policies() {
    println!("balancers (annotation ikukantai.dev/balancer, default {}):", registry::DEFAULT_BALANCER);
    for e in registry::BALANCERS {
        println!("  {:<10} {}", e.name, e.summary);
    }
    println!("placements (annotation ikukantai.dev/placement, default {}):", registry::DEFAULT_PLACEMENT);
    for e in registry::PLACEMENTS {
        println!("  {:<10} {}", e.name, e.summary);
    }
    println!("queues (annotation ikukantai.dev/queue, default {}):", registry::DEFAULT_QUEUE);
    for (name, summary) in registry::QUEUES {
        println!("  {name:<10} {summary}");
    }
}
