//! The scale run (`bench/run --million`): one step of 1,000,000 tasks on
//! each store, loaded by `taskctl` from a 100 MB sheet (the loader's peak
//! memory is its own process's), `status` on it, and a few thousand of its
//! tasks run by 32 agents (their peak memory, calls per task, lost claims).

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use taskfleet::store::{Store, TaskStore};
use testkit::{Kind, RequestCounter, TestStore};

use super::{Args, Results, proc_status_kb, spawn_agent, store_name};

/// Tasks in the step.
const TASKS: usize = 1_000_000;
/// Tasks the agents run before they are stopped.
const RUN: u64 = 3_000;
/// Agents.
const AGENTS: usize = 32;

pub async fn run(
    r: &mut Results,
    args: &Args,
    cond_ceiling: f64,
    batch_ceiling: f64,
) -> Result<()> {
    let taskctl = args
        .taskctl
        .as_deref()
        .context("--million needs --taskctl")?;
    let dir = tempfile::tempdir()?;
    let sheet = dir.path().join("million.csv");
    write_sheet(&sheet)?;
    let bytes = std::fs::metadata(&sheet)?.len();
    eprintln!("   sheet: {TASKS} rows, {:.0} MB", bytes as f64 / 1e6);
    for kind in [Kind::Dynamo, Kind::Sqlite] {
        let t = TestStore::new(kind, "million").await;
        let name = store_name(kind);
        let (secs, peak) = load(taskctl, &t, &sheet)?;
        let rate = TASKS as f64 / secs;
        r.add(
            name,
            format!("scale: load {TASKS} tasks with taskctl"),
            rate,
            "tasks/s",
            if kind == Kind::Dynamo {
                format!(
                    "{secs:.0} s; {:.0}% of the BatchWriteItem ceiling",
                    100.0 * rate / batch_ceiling
                )
            } else {
                format!("{secs:.0} s")
            },
        );
        r.add(
            name,
            format!("scale: load {TASKS} tasks: taskctl peak memory"),
            peak as f64 / 1024.0,
            "MiB",
            format!(
                "peak resident set of the taskctl process; sheet {:.0} MB",
                bytes as f64 / 1e6
            ),
        );
        let status = counted(&t);
        let started = Instant::now();
        let s = status.0.status(Some("big")).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if s[0].total != TASKS as u64 {
            bail!("status counts {} tasks of {TASKS}", s[0].total);
        }
        if kind == Kind::Dynamo {
            r.add(
                name,
                format!("scale: status at {TASKS} tasks: requests"),
                status.1.get() as f64,
                "requests",
                "the same as at 1,000 tasks",
            );
        }
        r.add(
            name,
            format!("scale: status at {TASKS} tasks: time"),
            ms,
            "ms",
            "one call",
        );
        run_agents(r, args, &t, kind, cond_ceiling).await?;
    }
    Ok(())
}

/// A generated cohort-by-windows sheet: 2,500 samples x 400 windows.
fn write_sheet(path: &Path) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "sample,window,chrom,start,end,cram")?;
    for i in 0..TASKS {
        let (s, w) = (i / 400, i % 400);
        writeln!(
            out,
            "HG{s:05}_w{w:04},{w},chr{},{},{},s3://cohort/data/HG{s:05}/alignment/HG{s:05}.final.cram",
            w % 22 + 1,
            w * 1_000_000 + 1,
            (w + 1) * 1_000_000
        )?;
    }
    out.flush()?;
    Ok(())
}

/// The store's table through a client that counts requests.
fn counted(t: &TestStore) -> (Store, RequestCounter) {
    let counter = RequestCounter::default();
    let store = match &t.store {
        Store::Dynamo(d) => Store::Dynamo(taskfleet::DynamoStore::new(
            testkit::client(&counter),
            d.table(),
            testkit::endpoint(),
        )),
        other @ Store::Sqlite(_) => other.clone(),
    };
    (store, counter)
}

/// Loads the sheet with `taskctl`; its time and peak memory (KiB).
fn load(taskctl: &Path, t: &TestStore, sheet: &Path) -> Result<(f64, u64)> {
    let mut cmd = Command::new(taskctl);
    cmd.env_clear()
        .envs(testkit::child_env())
        .args(["--table", &t.locator]);
    if t.kind == Kind::Dynamo {
        cmd.args(["--endpoint-url", &testkit::endpoint()]);
    }
    cmd.args(["load", "--step", "big", "--command", "true", "--json"])
        .arg(sheet)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = cmd.spawn().context("start taskctl")?;
    let peak = watch(&mut [&mut child])?;
    Ok((started.elapsed().as_secs_f64(), peak))
}

/// Waits for the children, polling their peak resident memory; the
/// largest, in KiB.
fn watch(children: &mut [&mut Child]) -> Result<u64> {
    let mut peak = 0;
    let mut running = children.len();
    while running > 0 {
        running = 0;
        for child in children.iter_mut() {
            if let Some(kb) = proc_status_kb(child.id(), "VmHWM:") {
                peak = peak.max(kb);
            }
            match child.try_wait()? {
                Some(status) if !status.success() => bail!("taskctl load ended with {status}"),
                Some(_) => {}
                None => running += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(peak)
}

/// 32 agents on the million-task step until a few thousand are done, then
/// stopped (SIGTERM: they release what they hold).
async fn run_agents(
    r: &mut Results,
    args: &Args,
    t: &TestStore,
    kind: Kind,
    cond_ceiling: f64,
) -> Result<()> {
    let mut children = Vec::new();
    for i in 0..AGENTS {
        let stats = t.dir.path().join(format!("stats-{i}.json"));
        children.push((
            spawn_agent(
                &args.agent,
                &t.locator,
                t.dir.path(),
                "big",
                &["--idle-timeout", "1s", "--poll-max", "1s"],
                Some(&stats),
                None,
            )?,
            stats,
        ));
    }
    let started = Instant::now();
    let mut peak = 0;
    let secs = loop {
        for (child, _) in &children {
            if let Some(kb) = proc_status_kb(child.id(), "VmHWM:") {
                peak = peak.max(kb);
            }
        }
        let done = t.store.status(Some("big")).await?[0].done;
        if done >= RUN {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("32 agents did {done} tasks in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let done = t.store.status(Some("big")).await?[0].done;
    for (child, _) in &children {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let (mut won, mut lost, mut calls) = (0u64, 0u64, 0u64);
    for (mut child, stats) in children {
        child.wait()?;
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats)?)?;
        let g = |k: &str| s[k].as_u64().unwrap_or(0);
        won += g("claims_won");
        lost += g("claims_lost");
        calls += g("claims_won")
            + g("claims_lost")
            + g("candidate_queries")
            + g("finishes")
            + g("other_reads");
    }
    let name = store_name(kind);
    let rate = done as f64 / secs;
    let per_task = calls as f64 / won.max(1) as f64;
    r.add(
        name,
        format!("scale: {AGENTS} agents on the {TASKS}-task step"),
        rate,
        "tasks/s",
        if kind == Kind::Dynamo {
            format!(
                "{done} done in {secs:.0} s; {:.0}% of ceiling/requests-per-task",
                100.0 * rate / (cond_ceiling / per_task)
            )
        } else {
            format!("{done} done in {secs:.0} s")
        },
    );
    r.add(
        name,
        format!("scale: {AGENTS} agents: store calls per task"),
        per_task,
        "calls",
        "per claimed task, until stopped",
    );
    r.add(
        name,
        format!("scale: {AGENTS} agents: lost claims per claim"),
        lost as f64 / (won + lost).max(1) as f64,
        "ratio",
        "",
    );
    r.add(
        name,
        format!("scale: {AGENTS} agents: peak memory of one agent"),
        peak as f64 / 1024.0,
        "MiB",
        "largest peak resident set among the agents; scripts not included",
    );
    Ok(())
}
