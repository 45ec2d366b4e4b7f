//! Local workers: agent processes on this machine, for the embedded store
//! (or a DynamoDB table) without an EC2 fleet.
//!
//! Each worker is a detached `agent` process in its own process group, so
//! a Ctrl-C in the terminal that launched it does not reach it; `taskctl
//! stop` sends it SIGTERM. It inherits taskctl's environment, of which its
//! scripts get only the allow-list and the names given with `--pass-env`
//! (see `taskfleet::envrules`). A small JSON file per worker under
//! `STATE/workers/` records its pid, step, worker id and log file; STATE
//! is the directory of the embedded store's file (`.taskfleet/` by default).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use taskfleet::connect::Locator;
use taskfleet::store::{Store, TaskStore};
use taskfleet::time::Timestamp;

use crate::cli::{GlobalArgs, LaunchArgs, StopArgs};

/// What `launch` records about a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Worker {
    /// Process id.
    pub pid: u32,
    /// The step it works for.
    pub step: String,
    /// Its worker id (the end of its owner name in the table).
    pub worker_id: String,
    /// When it was started.
    pub started_at: Timestamp,
    /// Its log file.
    pub log: PathBuf,
}

impl Worker {
    /// Whether the process is still this worker (not a reused pid).
    pub fn alive(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|cmdline| {
            cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == self.worker_id.as_bytes())
        })
    }
}

/// The state directory of the store `global` names.
pub fn state_dir(global: &GlobalArgs) -> Result<PathBuf> {
    match Locator::parse(&global.table).map_err(anyhow::Error::msg)? {
        Locator::Sqlite(path) => Ok(path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()),
        Locator::Dynamo(_) => Ok(PathBuf::from(".taskfleet")),
    }
}

fn workers_dir(global: &GlobalArgs) -> Result<PathBuf> {
    Ok(state_dir(global)?.join("workers"))
}

/// Every recorded worker, oldest first.
pub fn workers(global: &GlobalArgs) -> Result<Vec<(PathBuf, Worker)>> {
    let dir = workers_dir(global)?;
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(worker) = serde_json::from_str::<Worker>(&text)
        {
            out.push((path, worker));
        }
    }
    out.sort_by_key(|(_, w)| (w.started_at, w.pid));
    Ok(out)
}

/// `taskctl launch --local`.
pub async fn launch(global: &GlobalArgs, store: &Store, args: &LaunchArgs) -> Result<()> {
    if store.step(&args.step).await?.is_none() {
        bail!(
            "step '{}' does not exist in {}; load it first with `taskctl load --step {} ...`",
            args.step,
            store.describe(),
            args.step
        );
    }
    // The agents inherit taskctl's environment and hand these names on to
    // their scripts; one that is not set would stop every agent at start.
    for name in &args.pass_env {
        if std::env::var_os(name).is_none() {
            bail!(
                "--pass-env {name}: {name} is not set in this environment; set it, or drop --pass-env {name}"
            );
        }
    }
    let state = state_dir(global)?;
    let dir = workers_dir(global)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Forget workers of this step that have exited; count the others, so
    // that the new ones take the next places (--launch-index).
    let mut running = 0;
    for (path, w) in workers(global)? {
        if w.step == args.step && !w.alive() {
            let _ = std::fs::remove_file(path);
        } else if w.step == args.step {
            running += 1;
        }
    }
    let agent = agent_binary()?;
    let table = match Locator::parse(&global.table).map_err(anyhow::Error::msg)? {
        Locator::Sqlite(path) => format!("sqlite://{}", absolute(&path)?.display()),
        Locator::Dynamo(name) => format!("dynamodb://{name}"),
    };
    let mut pids = Vec::new();
    for index in 0..args.count {
        let worker_id = format!(
            "local-{}-{:06x}",
            args.step,
            rand::random::<u32>() & 0xff_ffff
        );
        let log = absolute(&dir)?.join(format!("{worker_id}.log"));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = agent_command(&agent, &table, &state, &worker_id, global, args)?;
        // Their places among each other: they start spread over the step.
        cmd.args(["--launch-index", &(running + index).to_string()]);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", agent.display()))?;
        let worker = Worker {
            pid: child.id(),
            step: args.step.clone(),
            worker_id: worker_id.clone(),
            started_at: Timestamp::now(),
            log,
        };
        let record = dir.join(format!("{worker_id}.json"));
        std::fs::write(&record, serde_json::to_vec_pretty(&worker)?)
            .with_context(|| format!("cannot write {}", record.display()))?;
        pids.push(child.id());
    }
    println!(
        "started {} local worker{} for step '{}' (pids {}); logs in {}",
        pids.len(),
        if pids.len() == 1 { "" } else { "s" },
        args.step,
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        dir.display()
    );
    Ok(())
}

/// The command line of one local worker.
fn agent_command(
    agent: &Path,
    table: &str,
    state: &Path,
    worker_id: &str,
    global: &GlobalArgs,
    args: &LaunchArgs,
) -> Result<Command> {
    let mut cmd = Command::new(agent);
    cmd.args(["--table", table, "--step", &args.step])
        .args(["--slots", &args.slots.to_string()])
        .args([
            "--idle-timeout",
            &humantime::format_duration(args.idle_timeout).to_string(),
        ])
        .args([
            "--grace",
            &humantime::format_duration(args.grace).to_string(),
        ])
        .args(["--worker-id", worker_id])
        .arg("--work-dir")
        .arg(absolute(state)?.join("work"))
        .arg("--log-dir")
        .arg(absolute(state)?.join("logs"));
    for name in &args.pass_env {
        cmd.args(["--pass-env", name]);
    }
    if let Some(url) = &global.endpoint_url {
        cmd.args(["--endpoint-url", url]);
    }
    if let Some(region) = &global.region {
        cmd.args(["--region", region]);
    }
    Ok(cmd)
}

/// One local worker row of `taskctl fleet`.
#[derive(Debug, Serialize)]
pub struct FleetRow {
    kind: &'static str,
    pid: u32,
    step: String,
    worker_id: String,
    state: &'static str,
    tasks: Vec<String>,
    uptime_seconds: u64,
    log: PathBuf,
}

/// The local workers (of `step` only, if given), with the tasks each runs.
pub async fn fleet_rows(
    global: &GlobalArgs,
    store: &Store,
    step: Option<&str>,
) -> Result<Vec<FleetRow>> {
    let all: Vec<Worker> = workers(global)?
        .into_iter()
        .map(|(_, w)| w)
        .filter(|w| step.is_none_or(|s| w.step == s))
        .collect();
    let mut running_by_owner: Vec<taskfleet::store::RunningTask> = Vec::new();
    let mut steps: Vec<&str> = all.iter().map(|w| w.step.as_str()).collect();
    steps.sort_unstable();
    steps.dedup();
    for step in steps {
        if let Some(meta) = store.step(step).await? {
            running_by_owner.extend(store.running(&meta).await?);
        }
    }
    let now = Timestamp::now();
    Ok(all
        .iter()
        .map(|w| {
            let alive = w.alive();
            let suffix = format!("/{}", w.worker_id);
            FleetRow {
                kind: "local",
                pid: w.pid,
                step: w.step.clone(),
                worker_id: w.worker_id.clone(),
                state: if alive { "running" } else { "exited" },
                tasks: running_by_owner
                    .iter()
                    .filter(|r| alive && r.owner.ends_with(&suffix))
                    .map(|r| r.task_id.clone())
                    .collect(),
                uptime_seconds: if alive {
                    now.since(w.started_at).as_secs()
                } else {
                    0
                },
                log: w.log.clone(),
            }
        })
        .collect())
}

/// The local workers' table of `taskctl fleet`.
pub fn print_rows(rows: &[FleetRow]) {
    println!(
        "{:>8}  {:<16}  {:<8}  {:>8}  TASKS",
        "PID", "STEP", "STATE", "UPTIME"
    );
    for r in rows {
        let tasks = if r.tasks.is_empty() {
            "-".to_owned()
        } else {
            r.tasks.join(", ")
        };
        println!(
            "{:>8}  {:<16}  {:<8}  {:>7}s  {}",
            r.pid, r.step, r.state, r.uptime_seconds, tasks
        );
    }
}

/// `taskctl stop`.
pub fn stop(global: &GlobalArgs, args: &StopArgs) -> Result<()> {
    let mine: Vec<(PathBuf, Worker)> = workers(global)?
        .into_iter()
        .filter(|(_, w)| w.step == args.step)
        .collect();
    let alive: Vec<&Worker> = mine.iter().map(|(_, w)| w).filter(|w| w.alive()).collect();
    for w in &alive {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(w.pid).unwrap_or(i32::MAX));
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            eprintln!(
                "warning: cannot signal worker {} (pid {}): {e}",
                w.worker_id, w.pid
            );
        }
    }
    if alive.is_empty() {
        for (path, _) in &mine {
            let _ = std::fs::remove_file(path);
        }
        println!("step '{}' has no local workers running", args.step);
        return Ok(());
    }
    println!(
        "asked {} local worker{} of step '{}' to stop",
        alive.len(),
        if alive.len() == 1 { "" } else { "s" },
        args.step
    );
    if !args.no_wait {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while alive.iter().any(|w| w.alive()) {
            if std::time::Instant::now() > deadline {
                bail!(
                    "workers of step '{}' are still running after 120 s; see `taskctl fleet`",
                    args.step
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("all local workers of step '{}' have stopped", args.step);
    }
    for (path, w) in &mine {
        if !w.alive() {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// The `agent` binary: beside this `taskctl`, else on PATH.
fn agent_binary() -> Result<PathBuf> {
    if let Ok(me) = std::env::current_exe() {
        let beside = me.with_file_name("agent");
        if beside.is_file() {
            return Ok(beside);
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("agent"))
        .find(|p| p.is_file())
        .context(
            "cannot find the `agent` binary beside taskctl or on PATH; build it with `cargo build`",
        )
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}
