//! Agents at work: claim+run with 1 to 32 agents on one step, and an idle
//! agent's footprint.
#![allow(clippy::too_many_lines)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use taskfleet::store::{SettingsChange, TaskStore};
use taskfleet::time::Timestamp;
use tempfile::TempDir;
use testkit::{Kind, TestStore, generated_sheet, load_text};

use super::{Results, children_cpu_seconds, emulator_cpu_seconds, proc_status_kb, store_name};

/// Starts an agent on `step`; with `stats`, it writes its counts there at
/// exit, and with `log`, its log at debug level.
pub(crate) fn spawn_agent(
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

/// The claim+run benchmarks of one store, as [`ClaimPlan`] says.
pub(crate) async fn claim_runs(
    r: &mut Results,
    kind: Kind,
    plan: &ClaimPlan<'_>,
    ceiling: Option<f64>,
    kept: &mut Vec<TempDir>,
) -> Result<()> {
    if plan.warm_up {
        // The emulator's JIT and the page cache warm on the first run of a
        // store: without this, the first measured count is the slower.
        let discard = std::mem::replace(&mut r.discard, true);
        let run = ClaimRun::new(plan.agent, plan.tasks / 4, 4, None);
        let warm = bench_claim_run(r, kind, &run, ceiling, kept).await;
        r.discard = discard;
        warm.context("the warm-up run")?;
    }
    let mut rates: Vec<(usize, f64)> = Vec::new();
    let mut order = Vec::new();
    for round in 0..plan.repeat {
        let mut counts = plan.agents.to_vec();
        if round % 2 == 1 {
            counts.reverse();
        }
        for a in counts {
            let run = ClaimRun::new(plan.agent, plan.tasks, a, plan.logs);
            rates.push((a, bench_claim_run(r, kind, &run, ceiling, kept).await?));
            order.push(a.to_string());
        }
    }
    if plan.repeat > 1 {
        for &a in plan.agents {
            let mut of: Vec<f64> = rates
                .iter()
                .filter(|(n, _)| *n == a)
                .map(|(_, rate)| *rate)
                .collect();
            of.sort_by(f64::total_cmp);
            let median = if of.len() % 2 == 1 {
                of[of.len() / 2]
            } else {
                f64::midpoint(of[of.len() / 2 - 1], of[of.len() / 2])
            };
            r.add(
                store_name(kind),
                format!(
                    "claim+run {} x `true`, {a} agent{}: median of {} runs",
                    plan.tasks,
                    if a == 1 { "" } else { "s" },
                    of.len()
                ),
                median,
                "tasks/s",
                format!(
                    "{:.0} to {:.0}; agents in the order {}",
                    of[0],
                    of[of.len() - 1],
                    order.join(",")
                ),
            );
        }
    }
    Ok(())
}

/// What [`claim_runs`] runs: each number of agents `repeat` times, every
/// other round in reverse order (so that what drifts during a benchmark
/// favours no number of agents), after an unreported warm-up run.
pub(crate) struct ClaimPlan<'a> {
    pub(crate) agent: &'a Path,
    pub(crate) tasks: usize,
    pub(crate) agents: &'a [usize],
    pub(crate) repeat: usize,
    pub(crate) warm_up: bool,
    pub(crate) logs: Option<&'a Path>,
}

/// One claim+run: its rows, and its rate (tasks/s). The run's directory
/// goes into `kept`, removed only when the benchmark ends: on an ext4
/// without a journal (this machine's) the kernel skips inodes freed in
/// the last minutes, one buffer lookup each, so a run measured after
/// another's 12,000 were removed pays for them.
async fn bench_claim_run(
    r: &mut Results,
    kind: Kind,
    run: &ClaimRun<'_>,
    ceiling: Option<f64>,
    kept: &mut Vec<TempDir>,
) -> Result<f64> {
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
    let TestStore { dir, .. } = t;
    kept.push(dir);
    Ok(rate)
}

pub(crate) async fn bench_agent_footprint(
    r: &mut Results,
    agent: &Path,
    idle_secs: u64,
) -> Result<()> {
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
