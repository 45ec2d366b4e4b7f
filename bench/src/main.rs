//! `taskfleet-bench`: measures loading, claiming and running, status and
//! the agent's footprint on DynamoDB Local and on the embedded store, each
//! beside the ceiling of the store it runs on, and prints a markdown table
//! (and writes the same as JSON).
//!
//! Run it through `bash bench/run`, which starts DynamoDB Local in a
//! private network namespace and passes its endpoint in
//! `TASKFLEET_TEST_DYNAMODB`. Figures are reported, never asserted.
#![allow(
    clippy::many_single_char_names,
    clippy::too_many_lines,
    clippy::format_push_string
)]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;
use taskfleet::store::{SettingsChange, Store, TaskStore};
use testkit::{Kind, RequestCounter, TestStore, generated_sheet, load_text};

mod agents;
mod ceiling;
mod million;

use agents::{ClaimPlan, bench_agent_footprint, claim_runs, spawn_agent};
use ceiling::dynamo_ceiling;

/// Benchmark sizes: the full run, or a reduced one for CI.
#[derive(Debug, Parser)]
#[command(name = "taskfleet-bench")]
struct Args {
    /// Small sizes (seconds, not minutes), so that CI keeps it working.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// The agent binary.
    #[arg(long)]
    agent: PathBuf,
    /// The scale run instead: 1,000,000 tasks in one step on each store
    /// (see `million`). Needs --taskctl.
    #[arg(long, conflicts_with = "quick", requires = "taskctl")]
    million: bool,
    /// The taskctl binary (the scale run loads through it).
    #[arg(long)]
    taskctl: Option<PathBuf>,
    /// Only the claim+run benchmarks (1, 4, 16 and 32 agents on each
    /// store): the quick loop when working on how agents find tasks.
    #[arg(long, conflicts_with_all = ["quick", "million"])]
    claims: bool,
    /// The numbers of agents of the claim+run benchmarks (comma-separated;
    /// default 1,4,16,32, or 1,4 with --quick).
    #[arg(long, value_delimiter = ',')]
    agents: Vec<usize>,
    /// Run the claim+run benchmarks this many times, every other round in
    /// reverse order (4,32,32,4,...), and add the median of each number
    /// of agents: one run's order and the machine's drift decide less.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    repeat: u16,
    /// Keep each agent's log (at debug level) in this directory, as
    /// `STORE-AGENTS-N.log`, to see where its calls went.
    #[arg(long)]
    agent_logs: Option<PathBuf>,
}

/// One row of the results.
#[derive(Debug, Clone, Serialize)]
struct Row {
    store: &'static str,
    what: String,
    value: f64,
    unit: &'static str,
    note: String,
}

struct Results {
    rows: Vec<Row>,
    /// Rows of a warm-up run: neither printed nor kept.
    discard: bool,
}

impl Results {
    fn add(
        &mut self,
        store: &'static str,
        what: impl Into<String>,
        value: f64,
        unit: &'static str,
        note: impl Into<String>,
    ) {
        if self.discard {
            return;
        }
        // Each benchmark's store file and the agents' work and log
        // directories are made under it (`bench/run --tmpfs` points it at
        // /dev/shm): a row measured without the disk says so.
        let mut what = what.into();
        if std::env::temp_dir().starts_with("/dev/shm") {
            what.push_str(", directories on tmpfs");
        }
        let row = Row {
            store,
            what,
            value,
            unit,
            note: note.into(),
        };
        eprintln!(
            "  {:<8} {:<48} {:>12.2} {:<10} {}",
            row.store, row.what, row.value, row.unit, row.note
        );
        self.rows.push(row);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(&args))
}

async fn run(args: &Args) -> Result<()> {
    let mut r = Results {
        rows: Vec::new(),
        discard: false,
    };
    let (load_sizes, run_tasks, agents, status_sizes): (&[usize], usize, &[usize], &[usize]) =
        if args.quick {
            (&[2_000], 200, &[1, 4], &[1_000])
        } else {
            (
                &[10_000, 100_000],
                2_000,
                &[1, 4, 16, 32],
                &[1_000, 100_000],
            )
        };

    let agents: &[usize] = if args.agents.is_empty() {
        agents
    } else {
        &args.agents
    };
    eprintln!("== DynamoDB Local");
    let (ceiling, batch_ceiling) = dynamo_ceiling(&mut r, args.quick).await?;
    if args.million {
        million::run(&mut r, args, ceiling, batch_ceiling).await?;
        return finish(args, &r);
    }
    let logs = args.agent_logs.as_deref();
    if !args.claims {
        for &n in load_sizes {
            bench_load(&mut r, Kind::Dynamo, n, Some(batch_ceiling)).await?;
        }
        for &n in status_sizes {
            bench_status(&mut r, Kind::Dynamo, n).await?;
        }
    }
    let plan = ClaimPlan {
        agent: &args.agent,
        tasks: run_tasks,
        agents,
        repeat: usize::from(args.repeat),
        warm_up: !args.quick,
        logs,
    };
    // Every claim+run's directories, removed when the benchmark ends.
    let mut kept = Vec::new();
    claim_runs(&mut r, Kind::Dynamo, &plan, Some(ceiling), &mut kept).await?;
    if !args.claims {
        bench_agent_footprint(&mut r, &args.agent, if args.quick { 3 } else { 60 }).await?;
    }

    eprintln!("== embedded store (SQLite)");
    if !args.claims {
        for &n in load_sizes {
            bench_load(&mut r, Kind::Sqlite, n, None).await?;
        }
        for &n in status_sizes {
            bench_status(&mut r, Kind::Sqlite, n).await?;
        }
    }
    claim_runs(&mut r, Kind::Sqlite, &plan, None, &mut kept).await?;

    finish(args, &r)
}

/// Prints the table and writes the JSON.
fn finish(args: &Args, r: &Results) -> Result<()> {
    println!("{}", markdown(&r.rows));
    std::fs::write(&args.out, serde_json::to_vec_pretty(&r.rows)?)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn store_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Dynamo => "dynamodb",
        Kind::Sqlite => "sqlite",
    }
}

fn cpu_seconds() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// CPU seconds (user + system) of the children this process has waited
/// for, and of theirs: the agents and the scripts they ran.
fn children_cpu_seconds() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// CPU seconds DynamoDB Local's JVM has used so far (`None`: not found on
/// this machine). `/proc` counts them in `USER_HZ`, 100 a second on Linux.
fn emulator_cpu_seconds() -> Option<f64> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.windows(13).any(|w| w == b"DynamoDBLocal") {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command's closing parenthesis start at the
        // third (state); utime and stime are the 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
        return Some((ticks(11)? + ticks(12)?) / 100.0);
    }
    None
}

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Store with a request counter (DynamoDB), or the plain file (SQLite).
async fn counted_store(kind: Kind, label: &str) -> (TestStore, RequestCounter) {
    let t = TestStore::new(kind, label).await;
    let counter = RequestCounter::default();
    let t = match (&t.store, kind) {
        (Store::Dynamo(d), Kind::Dynamo) => {
            let store = Store::Dynamo(taskfleet::DynamoStore::new(
                testkit::client(&counter),
                d.table(),
                testkit::endpoint(),
            ));
            TestStore { store, ..t }
        }
        _ => t,
    };
    (t, counter)
}

async fn bench_load(
    r: &mut Results,
    kind: Kind,
    n: usize,
    batch_ceiling: Option<f64>,
) -> Result<()> {
    let (t, counter) = counted_store(kind, "load").await;
    let sheet = generated_sheet(n);
    let cpu = cpu_seconds();
    counter.reset();
    let started = Instant::now();
    let report = load_text(&t.store, "load", "true", &sheet, SettingsChange::default()).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    assert_eq!(report.loaded, n);
    let name = store_name(kind);
    let rate = n as f64 / secs;
    r.add(
        name,
        format!("load {n} tasks, new step"),
        rate,
        "tasks/s",
        match batch_ceiling {
            Some(c) => format!(
                "{secs:.2} s; {:.0}% of the BatchWriteItem ceiling",
                100.0 * rate / c
            ),
            None => format!("{secs:.2} s"),
        },
    );
    if kind == Kind::Dynamo {
        r.add(
            name,
            format!("load {n} tasks, new step: requests"),
            counter.get() as f64,
            "requests",
            format!(
                "{} BatchWriteItem of 25 plain puts, {} TransactWriteItems counting them under the step's lock",
                counter.of("BatchWriteItem"),
                counter.of("TransactWriteItems")
            ),
        );
    }
    r.add(
        name,
        format!("load {n} tasks: client CPU"),
        cpu,
        "s",
        "user + system, this process",
    );
    let peak = proc_status_kb(std::process::id(), "VmHWM:").unwrap_or(0);
    r.add(
        name,
        format!("load {n} tasks: peak memory"),
        peak as f64 / 1024.0,
        "MiB",
        "process peak so far (includes the sheet text the benchmark generates)",
    );

    // The same sheet again: what idempotency costs, every row checked
    // against the table by a conditional insert.
    counter.reset();
    let started = Instant::now();
    let again = load_text(&t.store, "load", "true", &sheet, SettingsChange::default()).await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(again.skipped_existing, n);
    let rate = n as f64 / secs;
    r.add(
        name,
        format!("load {n} tasks again, step exists"),
        rate,
        "tasks/s",
        match batch_ceiling {
            Some(c) => format!(
                "{secs:.2} s; {:.0}% of the BatchWriteItem ceiling; all skipped",
                100.0 * rate / c
            ),
            None => format!("{secs:.2} s; all skipped"),
        },
    );
    if kind == Kind::Dynamo {
        r.add(
            name,
            format!("load {n} tasks again: requests"),
            counter.get() as f64,
            "requests",
            "one TransactWriteItems of conditional puts and its counter per batch of up to 99",
        );
    }
    Ok(())
}

async fn bench_status(r: &mut Results, kind: Kind, n: usize) -> Result<()> {
    let (t, counter) = counted_store(kind, "status").await;
    load_text(
        &t.store,
        "status",
        "true",
        &generated_sheet(n),
        SettingsChange::default(),
    )
    .await;
    // Warm the connection, then time the median of five.
    t.store.status(Some("status")).await?;
    let mut times = Vec::new();
    counter.reset();
    for _ in 0..5 {
        let started = Instant::now();
        let s = t.store.status(Some("status")).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(s[0].total, n as u64);
    }
    times.sort_by(f64::total_cmp);
    let name = store_name(kind);
    if kind == Kind::Dynamo {
        r.add(
            name,
            format!("status at {n} tasks: requests"),
            counter.get() as f64 / 5.0,
            "requests",
            "per status call",
        );
    }
    r.add(
        name,
        format!("status at {n} tasks: time"),
        times[2],
        "ms",
        "median of 5",
    );
    Ok(())
}

fn markdown(rows: &[Row]) -> String {
    let mut out =
        String::from("| store | measure | value | unit | note |\n|---|---|---:|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.2} | {} | {} |\n",
            r.store, r.what, r.value, r.unit, r.note
        ));
    }
    out
}
