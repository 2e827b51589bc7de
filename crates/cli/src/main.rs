//! `ikukantai`: the one binary of the ikukantai serverless platform.

mod client;
mod cluster;
mod commands;
mod evaluate;
mod function;
mod out;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

// The allocator is jemalloc, from ikukantai_alloc: an idle HTTP/1.1 connection leaves fewer
// resident pages behind than with glibc's malloc and a proxied request costs fewer instructions
// (docs/benchmarks.md).

/// ikukantai (行く艦隊): a latency-aware serverless platform for edge–cloud fleets.
#[derive(Debug, Parser)]
#[command(name = "ikukantai", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the fleet's API is, and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
struct ApiArgs {
    /// The fleet API address.
    #[arg(long, env = "IKUKANTAI_API", default_value = commands::DEFAULT_API, global = true)]
    api: String,
    /// Bearer token of the API, if it requires one.
    #[arg(long, env = "IKUKANTAI_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Services,
    Revisions,
    Instances,
    Nodes,
    Placements,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole edge–cloud fleet on this machine: control plane, one gateway per node, instances
    /// as local processes, emulated links, latency monitor.
    Up(commands::UpArgs),
    /// Create or update Services from manifests.
    Apply {
        /// Manifest files (`-` reads standard input). Repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List services, revisions, instances, nodes or placements.
    Get {
        /// What to list.
        kind: Kind,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a service in full: spec, status, revisions and placement.
    Describe {
        /// `service`.
        #[arg(value_parser = ["service", "services", "ksvc"])]
        kind: String,
        /// Service name.
        name: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a service, its revisions and instances.
    Delete {
        /// `service`.
        #[arg(value_parser = ["service", "services", "ksvc"])]
        kind: String,
        /// Service name.
        name: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send requests to a service through a node's gateway and show where each was served.
    Invoke {
        /// Service name.
        service: String,
        /// The node whose gateway the requests enter.
        #[arg(long)]
        from: String,
        /// Path.
        #[arg(long, default_value = "/")]
        path: String,
        /// Number of requests (sent one after the other).
        #[arg(short = 'c', long, default_value_t = 1)]
        count: usize,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show the round-trip times between nodes: measured, estimated, configured, and which one
    /// decisions use.
    Latency {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Only the pairs from this node (table output).
        #[arg(long)]
        from: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print an instance's log.
    Logs {
        /// Instance name (see `ikukantai get instances`).
        instance: String,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        #[command(flatten)]
        api: ApiArgs,
    },
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
    /// Evaluate the policy sets on a scenario: a fleet per set, open-loop load, report and plots.
    Bench {
        /// Scenario file (see bench/*.yaml).
        scenario: PathBuf,
        /// Output directory (report.json, report.md, plots).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the load and the policies.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Run every policy set this many times (seeds S, S+1, …): the report pools them and
        /// shows each cell's spread over the runs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
    },
    /// Simulate the policy sets on a scenario in virtual time: the same decisions as the fleet,
    /// modelled links and processing; the same report as `bench`, in seconds, and repeatable.
    /// With `--sweep N`, N random edge–cloud cases instead, `ours` against the baselines.
    Sim {
        /// Scenario file (see bench/*.yaml); not with `--sweep` or `--case`.
        #[arg(required_unless_present_any = ["sweep", "case"], conflicts_with_all = ["sweep", "case"])]
        scenario: Option<PathBuf>,
        /// Output directory (report.json, report.md, plots; or sweep.md, sweep.json and the worst
        /// cases as scenario files).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the load, the links and the policies (and of the sweep's cases).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Run this many random cases.
        #[arg(long, value_name = "N")]
        sweep: Option<usize>,
        /// Run every policy set this many times (seeds S, S+1, …), as `bench --runs`; with
        /// `--sweep`, each case (the cases stay those of S), its runs pooled.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// Write case K of the sweep seeded `--seed` as `case-K.yaml` in `--out`, to rerun with
        /// `sim` or `bench`, and run nothing (repeatable).
        #[arg(long, value_name = "K", conflicts_with = "sweep")]
        case: Vec<usize>,
    },
    /// Print the CustomResourceDefinitions (Knative Service, Placement) for Kubernetes.
    Crds {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the Kubernetes controller (in-cluster, or with the current kube context).
    Controller(cluster::ControllerArgs),
    /// Run the per-node gateway on Kubernetes (the DaemonSet's container).
    Gateway(cluster::GatewayArgs),
    /// Run the queue proxy as an instance Pod's sidecar (configured by its environment).
    QueueProxy,
    /// Run a built-in function (the demo `hello`), listening on $PORT.
    Function {
        /// `hello`: `/` answers "Konnichiwa from INSTANCE in NODE", `/sleep/MS`, `/nodename`.
        #[arg(value_parser = ["hello"])]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => commands::up(args).await,
            Command::Apply { files, api } => commands::apply(&files, &api).await,
            Command::Get { kind, output, api } => commands::get(kind, output, &api).await,
            Command::Describe { name, namespace, api, .. } => {
                commands::describe(&namespace, &name, &api).await
            }
            Command::Delete { name, namespace, api, .. } => commands::delete(&namespace, &name, &api).await,
            Command::Invoke { service, from, path, count, namespace, api } => {
                commands::invoke(&service, &namespace, &from, &path, count, &api).await
            }
            Command::Latency { output, from, api } => commands::latency(output, from.as_deref(), &api).await,
            Command::Logs { instance, tail, api } => commands::logs(&instance, tail, &api).await,
            Command::Validate { files } => commands::validate(&files),
            Command::Policies => {
                commands::policies();
                Ok(ExitCode::SUCCESS)
            }
            Command::Function { name } => function::run(&name).await,
            Command::Crds { out } => cluster::crds(out.as_deref()),
            Command::Controller(args) => cluster::controller(args).await,
            Command::Gateway(args) => cluster::gateway(args).await,
            Command::QueueProxy => cluster::queue_proxy().await,
            Command::Bench { scenario, out, seed, runs } => {
                evaluate::bench(&scenario, &out, seed, runs).await
            }
            Command::Sim { scenario, out, seed, sweep, runs, case } => match (scenario, sweep) {
                (_, Some(count)) => evaluate::sweep(count, &out, seed, runs),
                (Some(scenario), None) => evaluate::sim(&scenario, &out, seed, runs),
                (None, None) => evaluate::write_cases(&case, &out, seed),
            },
        }
    });
    result.unwrap_or_else(|e| {
        // One problem a line, each marked, however many the fleet reported.
        for line in format!("{e:#}").lines() {
            eprintln!("error: {line}");
        }
        ExitCode::FAILURE
    })
}
