//! Starting and watching real agent processes.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use taskfleet::model::Task;
use taskfleet::store::TaskStore;
pub use testkit::{TestTable, endpoint, samples_2504};

/// The clock-skew margin the product promises: a lease that ran out is
/// reclaimed no sooner than this after its expiry. Written out here rather
/// than read from the library, so that a smaller margin there fails.
pub const SKEW_MARGIN: Duration = Duration::from_secs(5);

/// An agent process on a test table.
pub struct Agent {
    pub child: Child,
    pub stderr_path: std::path::PathBuf,
}

impl Agent {
    /// `agent --table T --step S ARGS...`, logs and work under `dir`,
    /// `env` added to its environment (the scripts inherit it).
    pub fn spawn(t: &TestTable, step: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_on(&t.name, t.dir.path(), step, args, env)
    }

    /// The same on any store: `locator` is the `--table` value.
    pub fn spawn_on(
        locator: &str,
        dir: &Path,
        step: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_at(&endpoint(), locator, dir, step, args, env)
    }

    /// The same, talking to DynamoDB at `endpoint` (a private emulator, or
    /// a proxy in front of one).
    pub fn spawn_at(
        endpoint: &str,
        locator: &str,
        dir: &Path,
        step: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_path = dir.join(format!("agent-{n}.stderr"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
        cmd.env_clear()
            .envs(testkit::child_env())
            .env("AGENT_LOG", "info")
            .envs(env.iter().copied())
            .args([
                "--table",
                locator,
                "--endpoint-url",
                endpoint,
                "--step",
                step,
            ])
            .args(["--work-dir", &dir.join("work").display().to_string()])
            .args(["--log-dir", &dir.join("logs").display().to_string()])
            .args([
                "--retry-delay",
                "100ms",
                "--poll-max",
                "1s",
                "--kill-grace",
                "2s",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
        Self {
            child: cmd.spawn().expect("start agent"),
            stderr_path,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for the agent to exit, at most `limit`.
    #[track_caller]
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait agent") {
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "agent did not exit within {limit:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal agent");
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it is still running (not exited, not reaped).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait agent").is_none()
    }
}

/// What an agent needs to let task scripts write to `log`: the variable,
/// and `--pass-env RUNLOG` where the agent gives scripts an allow-listed
/// environment.
pub fn runlog_setup(log: &testkit::RunLog) -> ((&'static str, String), Vec<String>) {
    (
        log.env(),
        testkit::RunLog::agent_args(Path::new(env!("CARGO_BIN_EXE_agent"))),
    )
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The task, which must exist.
pub async fn task(t: &TestTable, step: &str, id: &str) -> Task {
    t.store.task(step, id).await.unwrap().expect("task exists")
}

/// Whether a process is still alive.
pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A process seen in /proc.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    /// Its command name (`/proc/PID/comm`).
    pub comm: String,
}

/// The live processes whose environment holds `name=value`.
pub fn processes_with_env(name: &str, value: &str) -> Vec<Proc> {
    let wanted = format!("{name}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        panic!("/proc is not readable");
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|&b| b == 0)
                    .any(|entry| entry == wanted.as_bytes())
            })
        })
        .filter(|&pid| alive(pid))
        .map(|pid| Proc {
            pid,
            comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .trim()
                .to_owned(),
        })
        .collect()
}
