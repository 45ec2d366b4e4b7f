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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use clap::Parser;
use futures::StreamExt;
use serde::Serialize;
use taskfleet::store::{SettingsChange, Store, TaskStore};
use taskfleet::time::Timestamp;
use testkit::{Kind, RequestCounter, TestStore, generated_sheet, load_text};

mod million;

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

struct Results(Vec<Row>);

impl Results {
    fn add(
        &mut self,
        store: &'static str,
        what: impl Into<String>,
        value: f64,
        unit: &'static str,
        note: impl Into<String>,
    ) {
        let row = Row {
            store,
            what: what.into(),
            value,
            unit,
            note: note.into(),
        };
        eprintln!(
            "  {:<8} {:<48} {:>12.2} {:<10} {}",
            row.store, row.what, row.value, row.unit, row.note
        );
        self.0.push(row);
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
    let mut r = Results(Vec::new());
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
    for &a in agents {
        let run = ClaimRun::new(&args.agent, run_tasks, a, logs);
        bench_claim_run(&mut r, Kind::Dynamo, &run, Some(ceiling)).await?;
    }
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
    for &a in agents {
        let run = ClaimRun::new(&args.agent, run_tasks, a, logs);
        bench_claim_run(&mut r, Kind::Sqlite, &run, None).await?;
    }

    finish(args, &r)
}

/// Prints the table and writes the JSON.
fn finish(args: &Args, r: &Results) -> Result<()> {
    println!("{}", markdown(&r.0));
    std::fs::write(&args.out, serde_json::to_vec_pretty(&r.0)?)
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

/// The emulator's own rates with the same SDK and connection settings:
/// conditional UpdateItem (4 in flight) and BatchWriteItem items.
/// Returns the conditional-write rate and the BatchWriteItem rate.
async fn dynamo_ceiling(r: &mut Results, quick: bool) -> Result<(f64, f64)> {
    let t = TestStore::new(Kind::Dynamo, "ceiling").await;
    let Store::Dynamo(d) = &t.store else {
        unreachable!()
    };
    let (client, table) = (d.client().clone(), d.table().to_owned());
    let key = |i: usize| {
        [
            (
                "pk".to_owned(),
                AttributeValue::S(format!("bench#{:03}", i % 16)),
            ),
            ("sk".to_owned(), AttributeValue::S(format!("k{i}"))),
        ]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>()
    };
    let n_items = if quick { 1_000 } else { 10_000 };
    // The emulator is a JVM: warm it up with a pass of the same requests
    // before timing, as the other measurements run warm too.
    for _ in 0..2 {
        write_batches(&client, &table, n_items, &key).await;
    }
    let started = Instant::now();
    write_batches(&client, &table, n_items, &key).await;
    let batch_rate = n_items as f64 / started.elapsed().as_secs_f64();
    r.add(
        "dynamodb",
        "ceiling: BatchWriteItem (8 in flight)",
        batch_rate,
        "items/s",
        format!("{n_items} items"),
    );

    // Loading writes transactions of conditional puts: their ceiling too.
    let tx_key = |i: usize| {
        let mut k = key(i);
        k.insert("sk".into(), AttributeValue::S(format!("t{i}")));
        k
    };
    write_transactions(&client, &table, n_items, &tx_key).await;
    let started = Instant::now();
    write_transactions(&client, &table, n_items, &|i| {
        let mut k = key(i);
        k.insert("sk".into(), AttributeValue::S(format!("u{i}")));
        k
    })
    .await;
    r.add(
        "dynamodb",
        "ceiling: TransactWriteItems of 99 conditional puts (8 in flight)",
        n_items as f64 / started.elapsed().as_secs_f64(),
        "items/s",
        format!("{n_items} items"),
    );

    let n_updates = if quick { 400 } else { 4_000 };
    let mut started = Instant::now();
    for pass in 0..2 {
        if pass == 1 {
            started = Instant::now();
        }
        conditional_updates(&client, &table, n_updates, n_items, &key, 4).await;
    }
    let cond_rate = n_updates as f64 / started.elapsed().as_secs_f64();
    r.add(
        "dynamodb",
        "ceiling: conditional UpdateItem (4 in flight)",
        cond_rate,
        "writes/s",
        format!("{n_updates} writes"),
    );
    // What the emulator does with as many requests at once as the largest
    // fleet of the claim benchmarks sends it.
    let started = Instant::now();
    conditional_updates(&client, &table, n_updates, n_items, &key, 32).await;
    r.add(
        "dynamodb",
        "ceiling: conditional UpdateItem (32 in flight)",
        n_updates as f64 / started.elapsed().as_secs_f64(),
        "writes/s",
        format!("{n_updates} writes"),
    );
    Ok((cond_rate, batch_rate))
}

/// Puts `n` items with BatchWriteItem, 25 a request, 8 in flight.
async fn write_batches(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    n_items: usize,
    key: &dyn Fn(usize) -> std::collections::HashMap<String, AttributeValue>,
) {
    let batches: Vec<Vec<WriteRequest>> = (0..n_items)
        .map(|i| {
            let mut item = key(i);
            item.insert("n".into(), AttributeValue::N("0".into()));
            WriteRequest::builder()
                .put_request(
                    PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .expect("item set"),
                )
                .build()
        })
        .collect::<Vec<_>>()
        .chunks(25)
        .map(<[WriteRequest]>::to_vec)
        .collect();
    futures::stream::iter(batches)
        .map(|b| {
            let (client, table) = (client.clone(), table.to_owned());
            async move {
                client
                    .batch_write_item()
                    .request_items(table, b)
                    .send()
                    .await
            }
        })
        .buffer_unordered(8)
        .for_each(|res| async move {
            res.expect("batch write");
        })
        .await;
}

/// Puts `n` new items in transactions of 99 conditional puts, 8 in flight.
async fn write_transactions(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    n_items: usize,
    key: &dyn Fn(usize) -> std::collections::HashMap<String, AttributeValue>,
) {
    let batches: Vec<Vec<aws_sdk_dynamodb::types::TransactWriteItem>> = (0..n_items)
        .map(|i| {
            let mut item = key(i);
            item.insert("n".into(), AttributeValue::N("0".into()));
            aws_sdk_dynamodb::types::TransactWriteItem::builder()
                .put(
                    aws_sdk_dynamodb::types::Put::builder()
                        .table_name(table)
                        .set_item(Some(item))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .expect("item set"),
                )
                .build()
        })
        .collect::<Vec<_>>()
        .chunks(99)
        .map(<[_]>::to_vec)
        .collect();
    futures::stream::iter(batches)
        .map(|b| {
            let client = client.clone();
            async move {
                client
                    .transact_write_items()
                    .set_transact_items(Some(b))
                    .send()
                    .await
            }
        })
        .buffer_unordered(8)
        .for_each(|res| async move {
            res.expect("transaction");
        })
        .await;
}

/// `n_updates` conditional UpdateItem requests over the first `n_items` keys, 4 in
/// flight.
async fn conditional_updates(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    n_updates: usize,
    n_items: usize,
    key: &dyn Fn(usize) -> std::collections::HashMap<String, AttributeValue>,
    in_flight: usize,
) {
    futures::stream::iter(0..n_updates)
        .map(|i| {
            let (client, table) = (client.clone(), table.to_owned());
            async move {
                client
                    .update_item()
                    .table_name(table)
                    .set_key(Some(key(i % n_items)))
                    .update_expression("SET n = n + :one")
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .send()
                    .await
            }
        })
        .buffer_unordered(in_flight)
        .for_each(|res| async move {
            res.expect("conditional update");
        })
        .await;
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

/// Starts an agent on `step`; with `stats`, it writes its counts there at
/// exit, and with `log`, its log at debug level.
fn spawn_agent(
    agent: &Path,
    locator: &str,
    dir: &Path,
    step: &str,
    extra: &[&str],
    stats: Option<&Path>,
    log: Option<&Path>,
) -> Result<Child> {
    let mut cmd = Command::new(agent);
    cmd.env_clear()
        .envs(testkit::child_env())
        .env(
            "AGENT_LOG",
            if log.is_some() { "agent=debug" } else { "warn" },
        )
        .args([
            "--table",
            locator,
            "--endpoint-url",
            &testkit::endpoint(),
            "--step",
            step,
        ])
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg("--log-dir")
        .arg(dir.join("logs"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(match log {
            Some(path) => Stdio::from(std::fs::File::create(path).context("create agent log")?),
            None => Stdio::null(),
        });
    if let Some(stats) = stats {
        cmd.arg("--stats-file").arg(stats);
    }
    cmd.spawn().context("start agent")
}

/// One claim+run benchmark: `tasks` tasks of `true`, `agents` agents.
struct ClaimRun<'a> {
    agent: &'a Path,
    tasks: usize,
    agents: usize,
    logs: Option<&'a Path>,
}

impl<'a> ClaimRun<'a> {
    fn new(agent: &'a Path, tasks: usize, agents: usize, logs: Option<&'a Path>) -> Self {
        Self {
            agent,
            tasks,
            agents,
            logs,
        }
    }
}

async fn bench_claim_run(
    r: &mut Results,
    kind: Kind,
    run: &ClaimRun<'_>,
    ceiling: Option<f64>,
) -> Result<()> {
    let (agent, n, agents) = (run.agent, run.tasks, run.agents);
    if let Some(dir) = run.logs {
        std::fs::create_dir_all(dir).context("create the agent log directory")?;
    }
    let t = TestStore::new(kind, "run").await;
    load_text(
        &t.store,
        "run",
        "true",
        &generated_sheet(n),
        SettingsChange::default(),
    )
    .await;
    // The emulator's CPU counts only where it does the work.
    let emulator = || match kind {
        Kind::Dynamo => emulator_cpu_seconds(),
        Kind::Sqlite => None,
    };
    let (agents_cpu, emulator_cpu) = (children_cpu_seconds(), emulator());
    let started = Instant::now();
    let started_at = Timestamp::now();
    let mut children = Vec::new();
    for i in 0..agents {
        let stats = t.dir.path().join(format!("stats-{i}.json"));
        // As `taskctl launch --local --count N` starts them (and EC2 gives
        // the instances of one launch their ami-launch-index).
        let index = i.to_string();
        let log = run
            .logs
            .map(|dir| dir.join(format!("{}-{agents}-{i}.log", store_name(kind))));
        children.push((
            spawn_agent(
                agent,
                &t.locator,
                t.dir.path(),
                "run",
                &[
                    "--idle-timeout",
                    "1s",
                    "--poll-max",
                    "1s",
                    "--launch-index",
                    &index,
                ],
                Some(&stats),
                log.as_deref(),
            )?,
            stats,
        ));
    }
    // Throughput is measured until the last task is done, not until the
    // agents have idled out: each agent says when its last final write was
    // taken. (Asking the store while they run would share its CPU with
    // them: on DynamoDB Local a status every 50 ms cost more than the
    // agents' own calls.)
    let mut last_finish: Option<Timestamp> = None;
    let (mut won, mut lost, mut queries, mut finishes, mut other, mut heartbeats) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    for (mut child, stats) in children {
        child.wait()?;
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats)?)?;
        let g = |k: &str| s[k].as_u64().unwrap_or(0);
        won += g("claims_won");
        lost += g("claims_lost");
        queries += g("candidate_queries");
        finishes += g("finishes");
        other += g("other_reads");
        heartbeats += g("heartbeats");
        last_finish = last_finish.max(s["last_finish_at"].as_i64().map(Timestamp::from_millis));
        latencies.extend(
            s["claim_micros"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_u64),
        );
    }
    let agents_cpu = children_cpu_seconds() - agents_cpu;
    let done = t.store.status(Some("run")).await?[0].done;
    if done != n as u64 {
        bail!("the agents exited with {done} of {n} tasks done");
    }
    let secs = last_finish
        .context("no agent reported its last final write")?
        .since(started_at)
        .as_secs_f64();
    let emulator_cpu = emulator()
        .zip(emulator_cpu)
        .map(|(after, before)| after - before);
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let name = store_name(kind);
    let rate = n as f64 / secs;
    let per_task = (won + lost + queries + finishes + other) as f64 / n as f64;
    let what = format!(
        "claim+run {n} x `true`, {agents} agent{}",
        if agents == 1 { "" } else { "s" }
    );
    let note = match ceiling {
        Some(c) => format!(
            "{:.0}% of ceiling/requests-per-task",
            100.0 * rate / (c / per_task)
        ),
        None => String::new(),
    };
    r.add(name, what.clone(), rate, "tasks/s", note);
    r.add(
        name,
        format!("{what}: store calls per task"),
        per_task,
        "calls",
        format!(
            "queries {:.2}, claims {:.2}, finishes {:.2}, other {:.2}; heartbeats {heartbeats} apart",
            queries as f64 / n as f64,
            (won + lost) as f64 / n as f64,
            finishes as f64 / n as f64,
            other as f64 / n as f64
        ),
    );
    r.add(
        name,
        format!("{what}: lost claims per claim"),
        lost as f64 / won.max(1) as f64,
        "ratio",
        "",
    );
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    r.add(
        name,
        format!("{what}: CPU per task"),
        1000.0 * (agents_cpu + emulator_cpu.unwrap_or(0.0)) / n as f64,
        "ms",
        format!(
            "agents and scripts {:.2}{}; {:.0}% of {cores} cores busy until the agents exited",
            1000.0 * agents_cpu / n as f64,
            emulator_cpu.map_or(String::new(), |e| format!(
                ", DynamoDB Local {:.2}",
                1000.0 * e / n as f64
            )),
            100.0 * (agents_cpu + emulator_cpu.unwrap_or(0.0)) / (wall * cores as f64)
        ),
    );
    r.add(
        name,
        format!("{what}: claim latency p50"),
        pct(0.5),
        "ms",
        "",
    );
    r.add(
        name,
        format!("{what}: claim latency p99"),
        pct(0.99),
        "ms",
        "",
    );
    Ok(())
}

async fn bench_agent_footprint(r: &mut Results, agent: &Path, idle_secs: u64) -> Result<()> {
    let t = TestStore::new(Kind::Dynamo, "footprint").await;
    load_text(
        &t.store,
        "idle",
        "true",
        "sample\nA\n",
        SettingsChange::default(),
    )
    .await;
    // Empty the step first.
    let mut drain = spawn_agent(
        agent,
        &t.locator,
        t.dir.path(),
        "idle",
        &["--idle-timeout", "1s"],
        None,
        None,
    )?;
    drain.wait()?;
    let mut idle = spawn_agent(agent, &t.locator, t.dir.path(), "idle", &[], None, None)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = idle.id();
    let ticks = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(") ")
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let n = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        n(11) + n(12) // utime + stime, after the ") " split
    };
    let before = ticks(pid);
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let cpu = (ticks(pid) - before) / 100.0; // USER_HZ
    let rss = proc_status_kb(pid, "VmRSS:").unwrap_or(0);
    let _ = idle.kill();
    let _ = idle.wait();
    r.add(
        "dynamodb",
        "agent: resident memory idle",
        rss as f64 / 1024.0,
        "MiB",
        "",
    );
    r.add(
        "dynamodb",
        "agent: CPU while idle-polling",
        100.0 * cpu / idle_secs as f64,
        "% of a core",
        format!("over {idle_secs} s"),
    );

    let sheet: String = std::iter::once("sample".to_owned())
        .chain((0..8).map(|i| format!("S{i}")))
        .collect::<Vec<_>>()
        .join("\n");
    load_text(
        &t.store,
        "busy",
        "sleep 4",
        &sheet,
        SettingsChange::default(),
    )
    .await;
    let mut busy = spawn_agent(
        agent,
        &t.locator,
        t.dir.path(),
        "busy",
        &["--slots", "8", "--idle-timeout", "1s"],
        None,
        None,
    )?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = proc_status_kb(busy.id(), "VmRSS:").unwrap_or(0);
    busy.wait()?;
    r.add(
        "dynamodb",
        "agent: resident memory running 8 slots",
        rss as f64 / 1024.0,
        "MiB",
        "scripts not included",
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
