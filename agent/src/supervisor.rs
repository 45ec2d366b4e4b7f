//! The supervising parent of one script: `agent-supervise --parent-pid P
//! -- bash SCRIPT`, a small program shipped beside the agent, or, where it
//! is not, `agent __supervise ...`, the agent binary re-executed in a
//! hidden mode. Both run this code; the small program starts in a third
//! of the time (it has no runtime, no SDK and a few thousand relocations
//! instead of the agent's fifty thousand), which is most of what a short
//! script costs the agent's host.
//!
//! The agent starts it as the leader of a new process group; it starts
//! `bash` in that same group and waits. What it guarantees:
//!
//! - **The script dies with its agent.** The kernel sends the supervisor
//!   [`PARENT_GONE`] when its parent goes (`PR_SET_PDEATHSIG`), and it
//!   checks its parent every [`PARENT_CHECK_SECS`] besides (the death
//!   signal also fires when only the thread that started it exits). When
//!   the agent is gone, however it died, the supervisor kills every
//!   process the script started and then its whole group, itself included.
//!   As a child subreaper it inherits the script's orphans, so processes
//!   that left the group (`setsid`, double forks) are found and killed too.
//! - **Signals keep their meaning.** A signal sent to the group (the
//!   agent's TERM, grace, KILL) reaches `bash` directly; the supervisor
//!   does not die of TERM, HUP, INT and the like but waits for `bash`.
//! - **The outcome is the script's.** When `bash` ends, whatever it left
//!   running is killed, and the supervisor exits with `bash`'s exit code,
//!   or dies by the signal that killed `bash`: `ExitStatus::code()` and
//!   `signal()` read as if the agent had run `bash` itself. It prints
//!   nothing of its own except why it could not start `bash`.
//!
//! It blocks until a signal comes (a handler wakes it through a pipe), so
//! a script's end is seen as soon as the kernel reports it, without
//! polling. It reads no environment variable: it runs with the script's
//! environment, which it passes to `bash` unchanged.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, alarm, getpgrp, getpid, getppid};
use signal_hook::iterator::Signals;

/// The hidden first argument that makes the agent binary a supervisor.
pub const SUBCOMMAND: &str = "__supervise";

/// The supervisor's own program, looked for beside the agent binary.
pub const BINARY: &str = "agent-supervise";

/// What the kernel sends the supervisor when its parent goes.
pub const PARENT_GONE: Signal = Signal::SIGUSR1;

/// Seconds between checks that the parent is still there.
pub const PARENT_CHECK_SECS: u32 = 1;

/// Exit code when `bash` cannot be started at all (a shell's code for a
/// command it cannot find).
pub const CANNOT_START: i32 = 127;

/// Signals the supervisor handles instead of dying of them. Besides its
/// own (child ended, time to check, parent gone), those that the group
/// may be sent and that would otherwise end it before `bash`.
const WAITED: [Signal; 9] = [
    Signal::SIGCHLD,
    Signal::SIGALRM,
    PARENT_GONE,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR2,
    Signal::SIGPIPE,
];

/// Rounds of "find what is left, kill it" before giving up on a script
/// that keeps forking faster than it is killed.
const SWEEP_ROUNDS: usize = 100;

/// What to supervise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervise {
    /// The agent's pid: when the parent is no longer this, it is gone.
    pub parent: Pid,
    /// The program to run (`bash`).
    pub program: OsString,
    /// Its arguments (the script's path).
    pub args: Vec<OsString>,
}

impl Supervise {
    /// The command line after [`SUBCOMMAND`]: `--parent-pid P -- PROGRAM
    /// ARGS...`.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, String> {
        let usage = || format!("usage: {BINARY} --parent-pid PID -- PROGRAM [ARGS...]");
        let mut args = args.into_iter();
        if args.next().as_deref() != Some(OsStr::new("--parent-pid")) {
            return Err(usage());
        }
        let parent = args
            .next()
            .and_then(|p| p.to_str()?.parse::<i32>().ok())
            .filter(|&p| p > 0)
            .ok_or_else(usage)?;
        if args.next().as_deref() != Some(OsStr::new("--")) {
            return Err(usage());
        }
        let program = args.next().ok_or_else(usage)?;
        Ok(Self {
            parent: Pid::from_raw(parent),
            program,
            args: args.collect(),
        })
    }

    /// What supervises the scripts of the agent binary `agent`: the
    /// [`BINARY`] beside it if there is one, else `agent` itself.
    pub fn program_beside(agent: &Path) -> PathBuf {
        let own = agent.with_file_name(BINARY);
        if own.is_file() {
            own
        } else {
            agent.to_path_buf()
        }
    }

    /// The command that starts `exe` ([`BINARY`], or the agent binary in
    /// its hidden mode) supervising `program args` for the calling process.
    pub fn command(exe: &Path, program: &str, args: &[&OsStr]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(exe);
        if exe.file_name() != Some(OsStr::new(BINARY)) {
            cmd.arg(SUBCOMMAND);
        }
        cmd.arg("--parent-pid")
            .arg(std::process::id().to_string())
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs the program to its end and leaves as it did; never returns.
    pub fn run(&self) -> ! {
        // Handlers before anything starts, so that no signal is lost: each
        // is queued for the loop below. On exec, bash gets the defaults.
        let mut signals = match Signals::new(WAITED.map(|s| s as i32)) {
            Ok(signals) => signals,
            Err(e) => fail(&format!("cannot handle signals: {e}")),
        };
        // A mask inherited from the agent's thread would silence the
        // handlers, and bash would inherit it in turn.
        if let Err(e) = SigSet::empty().thread_set_mask() {
            fail(&format!("cannot unblock signals: {e}"));
        }
        if let Err(e) = prctl::set_pdeathsig(PARENT_GONE) {
            fail(&format!("cannot ask to be told of the agent's death: {e}"));
        }
        // The agent may have died before the kernel was asked to tell.
        if getppid() != self.parent {
            fail("the agent is gone; not starting the script");
        }
        if let Err(e) = prctl::set_child_subreaper(true) {
            fail(&format!("cannot become the script's subreaper: {e}"));
        }
        let script = match std::process::Command::new(&self.program)
            .args(&self.args)
            .spawn()
        {
            Ok(child) => Pid::from_raw(child.id() as i32),
            Err(e) => fail(&format!(
                "cannot start {}: {e}",
                Path::new(&self.program).display()
            )),
        };
        alarm::set(PARENT_CHECK_SECS);
        let mut ended = None;
        for signal in signals.forever() {
            match Signal::try_from(signal) {
                // Something ended: the script, or an orphan we inherited.
                Ok(Signal::SIGCHLD) => {
                    ended = reap(Some(script));
                    if ended.is_some() {
                        break;
                    }
                }
                // The periodic check.
                Ok(Signal::SIGALRM) => {
                    self.check_parent();
                    alarm::set(PARENT_CHECK_SECS);
                }
                // The kernel's word that the parent, or only the thread
                // of it that started us, exited.
                Ok(signal) if signal == PARENT_GONE => self.check_parent(),
                // TERM and the like, sent to the whole group: bash got
                // its own copy and decides; we wait to report its end.
                Ok(_) | Err(_) => {}
            }
        }
        alarm::cancel();
        kill_descendants();
        match ended {
            Some(status) => leave_as(status),
            None => fail("stopped waiting for signals"),
        }
    }

    /// If the agent is gone, kills everything and dies.
    fn check_parent(&self) {
        if getppid() != self.parent {
            kill_descendants();
            // Whatever is left of the group, and this process; only a group
            // of its own (as the agent starts it), never a caller's.
            if getpgrp() == getpid() {
                let _ = killpg(getpgrp(), Signal::SIGKILL);
            }
            std::process::exit(CANNOT_START);
        }
    }
}

/// Prints why the supervisor gives up (into the attempt's log) and exits.
fn fail(why: &str) -> ! {
    eprintln!("agent: {why}");
    std::process::exit(CANNOT_START);
}

/// Reaps every child that has ended; returns how `script` ended if it
/// did. With `None`, only reaps.
fn reap(script: Option<Pid>) -> Option<WaitStatus> {
    let mut ended = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return ended,
            Ok(status) => {
                if status.pid() == script {
                    ended = Some(status);
                }
            }
        }
    }
}

/// Whether this process still has a child (reaping those that ended).
fn has_children() -> bool {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            // Reaped one (or interrupted): look again.
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// SIGKILL to every live descendant of this process, until none is left
/// (or [`SWEEP_ROUNDS`] have passed). Every descendant is reparented to
/// this process (a subreaper) when its own parent dies, and reaped here.
fn kill_descendants() {
    let me = getpid();
    for _ in 0..SWEEP_ROUNDS {
        // No child means no descendant: the common case costs no /proc scan.
        if !has_children() {
            return;
        }
        let pids = descendants(me);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The live (not zombie) descendants of `root`, from `/proc`.
fn descendants(root: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut procs: Vec<(Pid, Pid)> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold anything, so the
        // fields are read after its last ')'.
        let mut fields = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace())
            .into_iter()
            .flatten();
        let (Some(state), Some(parent)) = (fields.next(), fields.next()) else {
            continue;
        };
        if state == "Z" || state == "X" {
            continue;
        }
        if let Ok(parent) = parent.parse() {
            procs.push((Pid::from_raw(pid), Pid::from_raw(parent)));
        }
    }
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            procs
                .iter()
                .filter(|&&(_, ppid)| ppid == parent)
                .map(|&(pid, _)| pid),
        );
        next += 1;
    }
    found.remove(0);
    found
}

/// Exits as the script did: with its code, or by its signal.
fn leave_as(ended: WaitStatus) -> ! {
    reap(None);
    match ended {
        WaitStatus::Exited(_, code) => std::process::exit(code),
        WaitStatus::Signaled(_, signal, _) => {
            // A script that dumped core has its own core; this process
            // leaves none beside it.
            let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
            let _ = signal_hook::low_level::emulate_default_handler(signal as i32);
            // Only signals whose default is not to end a process get
            // here, and those cannot have ended bash.
            std::process::exit(128 + signal as i32)
        }
        _ => std::process::exit(CANNOT_START),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_command_line_names_the_parent_and_the_program() {
        assert_eq!(
            Supervise::parse(args(&["--parent-pid", "42", "--", "bash", "/w/s.sh"])),
            Ok(Supervise {
                parent: Pid::from_raw(42),
                program: "bash".into(),
                args: args(&["/w/s.sh"]),
            })
        );
        for bad in [
            &["--parent-pid", "42", "bash"][..],
            &["--parent-pid", "0", "--", "bash"],
            &["--parent-pid", "x", "--", "bash"],
            &["--parent-pid", "42", "--"],
            &[],
        ] {
            assert!(Supervise::parse(args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_the_agent_binary_is_told_to_supervise() {
        let line = |exe: &str| {
            let cmd = Supervise::command(Path::new(exe), "bash", &[OsStr::new("s.sh")]);
            let std = cmd.as_std();
            std.get_args().map(OsStr::to_owned).collect::<Vec<_>>()
        };
        let pid = std::process::id().to_string();
        let tail = ["--parent-pid", &pid, "--", "bash", "s.sh"];
        assert_eq!(line("/opt/bin/agent-supervise"), args(&tail));
        let mut hidden = vec![SUBCOMMAND];
        hidden.extend(tail);
        assert_eq!(line("/opt/bin/agent"), args(&hidden));
    }

    #[test]
    fn descendants_are_found_through_every_generation() {
        let mut child = std::process::Command::new("bash")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild = Pid::from_raw(line.trim().parse().unwrap());
        let bash = Pid::from_raw(child.id() as i32);
        let found = descendants(getpid());
        let _ = kill(grandchild, Signal::SIGKILL);
        let _ = child.wait();
        assert!(
            found.contains(&bash) && found.contains(&grandchild),
            "{found:?} lacks {bash} or {grandchild}"
        );
        assert!(!found.contains(&getpid()));
    }
}
