//! A run log that task scripts write to, and the check that no task ran
//! twice at the same time.
//!
//! [`RunLog::script`] makes a task script that appends
//! `start <task_id> <attempt> <epoch_ns> <pid>` when it begins, a `tick`
//! line every 0.2 s while it runs, and an `end` line when it is done. The
//! file is named by the `RUNLOG` variable, which the agent passes on to its
//! scripts ([`RunLog::env`], [`RunLog::agent_args`]).
//!
//! A run lasts from its `start` to its `end`. A script killed before its
//! end (its lease was lost, its agent died with it) writes no `end`: it
//! counts as running until its last `tick`, or until now if its process is
//! still alive. So a script that outlives its agent keeps ticking and shows
//! up as an overlap, while one that was killed in time does not. Overlaps
//! shorter than one tick can go unseen.
//!
//! A run is one process (task, attempt, pid): a task reset by a faulty load
//! runs attempt 1 again, and that is a second run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The variable that names the run log in a script's environment.
pub const RUNLOG_VAR: &str = "RUNLOG";

/// One test's run log, in a directory of its own.
pub struct RunLog {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

/// One run of a task script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub task: String,
    pub attempt: u32,
    pub pid: i32,
    /// Epoch nanoseconds.
    pub start_ns: u128,
    /// The `end` line, else the last `tick` (or now, if still alive).
    pub last_ns: u128,
    pub ended: bool,
}

/// Every run in a log.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    pub runs: Vec<Run>,
}

impl RunLog {
    /// A new, empty log.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("runs.log");
        std::fs::write(&path, "").expect("create the run log");
        Self { path, _dir: dir }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The variable to put in the agent's environment.
    pub fn env(&self) -> (&'static str, String) {
        (RUNLOG_VAR, self.path.display().to_string())
    }

    /// Extra agent arguments that let `RUNLOG` through to scripts: an
    /// agent that gives scripts an allow-listed environment only takes
    /// `--pass-env NAME`; one that passes its whole environment needs
    /// nothing. Asks `agent --help` once.
    pub fn agent_args(agent: &Path) -> Vec<String> {
        static PASS_ENV: OnceLock<bool> = OnceLock::new();
        let takes_pass_env = *PASS_ENV.get_or_init(|| {
            let out = std::process::Command::new(agent)
                .arg("--help")
                .output()
                .unwrap_or_else(|e| panic!("cannot run {} --help: {e}", agent.display()));
            assert!(
                out.status.success(),
                "{} --help failed: {}",
                agent.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).contains("--pass-env")
        });
        if takes_pass_env {
            vec!["--pass-env".to_owned(), RUNLOG_VAR.to_owned()]
        } else {
            Vec::new()
        }
    }

    /// A task script that logs its run and takes `duration_ms` (a bash
    /// arithmetic expression, which may use `$TASK_ID` and `$ATTEMPT`).
    /// Timestamps come from bash's `EPOCHREALTIME`: no process per line.
    pub fn script(duration_ms: &str) -> String {
        format!(
            r#"runlog() {{ printf '%s %s %s %s %s\n' "$1" "$TASK_ID" "$ATTEMPT" "${{EPOCHREALTIME/[.,]/}}000" "$$" >> "$RUNLOG"; }}
runlog start
until_us=$(( ${{EPOCHREALTIME/[.,]/}} + ({duration_ms}) * 1000 ))
while (( ${{EPOCHREALTIME/[.,]/}} < until_us )); do sleep 0.2; runlog tick; done
runlog end
"#
        )
    }

    /// Every run logged so far.
    pub fn runs(&self) -> Runs {
        let text = std::fs::read_to_string(&self.path).expect("read the run log");
        let mut by_key: BTreeMap<(String, u32, i32), Run> = BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [kind, task, attempt, ns, pid] = f[..] else {
                continue;
            };
            let (Ok(attempt), Ok(ns), Ok(pid)) = (
                attempt.parse::<u32>(),
                ns.parse::<u128>(),
                pid.parse::<i32>(),
            ) else {
                continue;
            };
            let run = by_key
                .entry((task.to_owned(), attempt, pid))
                .or_insert_with(|| Run {
                    task: task.to_owned(),
                    attempt,
                    pid,
                    start_ns: ns,
                    last_ns: ns,
                    ended: false,
                });
            run.start_ns = run.start_ns.min(ns);
            run.last_ns = run.last_ns.max(ns);
            run.ended |= kind == "end";
        }
        let now = now_ns();
        let mut runs: Vec<Run> = by_key.into_values().collect();
        for run in &mut runs {
            if !run.ended && self.is_ours(run.pid) {
                run.last_ns = now;
            }
        }
        Runs { runs }
    }

    /// Panics, listing them, if any task's runs overlapped in time;
    /// returns how many times each task ran.
    #[track_caller]
    pub fn assert_no_overlap(&self) -> BTreeMap<String, usize> {
        let runs = self.runs();
        let overlaps = runs.overlaps();
        if !overlaps.is_empty() {
            let origin = runs.runs.iter().map(|r| r.start_ns).min().unwrap_or(0);
            let at = |ns: u128| (ns - origin) as f64 / 1e9;
            let mut text = String::new();
            for (a, b) in overlaps.iter().take(20) {
                let _ = writeln!(
                    text,
                    "  {}: attempt {} (pid {}) ran {:.1}s..{:.1}s{}, attempt {} (pid {}) ran {:.1}s..{:.1}s{}",
                    a.task,
                    a.attempt,
                    a.pid,
                    at(a.start_ns),
                    at(a.last_ns),
                    if a.ended { "" } else { " (no end)" },
                    b.attempt,
                    b.pid,
                    at(b.start_ns),
                    at(b.last_ns),
                    if b.ended { "" } else { " (no end)" },
                );
            }
            panic!(
                "{} overlapping runs of the same task (times from the first start; first 20):\n{text}",
                overlaps.len()
            );
        }
        runs.counts()
    }

    /// Kills the process groups of logged scripts that are still alive
    /// (scripts that outlived their agent); returns how many.
    pub fn kill_leftovers(&self) -> usize {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return 0;
        };
        let mut pids: Vec<i32> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4)?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter()
            .filter(|&pid| self.is_ours(pid))
            .filter(|&pid| kill(Pid::from_raw(-pid), Signal::SIGKILL).is_ok())
            .count()
    }

    /// Whether `pid` is alive and a script of this log (not a reused pid).
    fn is_ours(&self, pid: i32) -> bool {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            return false;
        }
        let want = format!("{RUNLOG_VAR}={}", self.path.display());
        environ.split(|&b| b == 0).any(|v| v == want.as_bytes())
    }
}

impl Default for RunLog {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        self.kill_leftovers();
    }
}

impl Runs {
    /// Runs per task.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in &self.runs {
            *counts.entry(r.task.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// The runs of `task`, by start time.
    pub fn of(&self, task: &str) -> Vec<&Run> {
        let mut runs: Vec<&Run> = self.runs.iter().filter(|r| r.task == task).collect();
        runs.sort_by_key(|r| r.start_ns);
        runs
    }

    /// Pairs of runs of the same task that were alive at the same time:
    /// (the earlier run still going, the run that started meanwhile).
    pub fn overlaps(&self) -> Vec<(Run, Run)> {
        let mut by_task: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
        for r in &self.runs {
            by_task.entry(&r.task).or_default().push(r);
        }
        let mut out = Vec::new();
        for runs in by_task.values_mut() {
            runs.sort_by_key(|r| r.start_ns);
            let mut longest: Option<&Run> = None;
            for &run in runs.iter() {
                if let Some(prev) = longest
                    && run.start_ns <= prev.last_ns
                {
                    out.push((prev.clone(), run.clone()));
                }
                if longest.is_none_or(|p| run.last_ns > p.last_ns) {
                    longest = Some(run);
                }
            }
        }
        out
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}
