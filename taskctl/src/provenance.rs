//! Where a load's inputs came from: the record each `taskctl load` keeps
//! on its step ([`LoadRecord`]), and the git state of its script file.
//!
//! The script's git state is read with the `git` command in the file's
//! directory: the commit checked out, the file's path in the repository,
//! whether it is committed and whether it has uncommitted changes. A file
//! outside a work tree (or with no `git` installed) has no git state;
//! `--require-clean` refuses it, as it refuses a file that is not
//! committed or differs from the commit.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use taskfleet::load::{LoadError, LoadReport};
use taskfleet::model::{GitState, LoadRecord};
use taskfleet::time::Timestamp;

/// The git state of `file`, whose loaded text is `text`, or why there is
/// none. A symbolic link is followed to the file it names, and the text is
/// compared with the committed blob itself: what is loaded is what counts,
/// whatever the index says (`assume-unchanged`, `skip-worktree`) or the
/// file became after it was read.
pub fn git_state(file: &Path, text: &str) -> Result<GitState, String> {
    let real = std::fs::canonicalize(file)
        .map_err(|e| format!("cannot resolve {} ({e})", file.display()))?;
    let dir = real.parent().unwrap_or_else(|| Path::new("/"));
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{} is not a file", file.display()))?;
    let git = |args: &[&str], stdin: Option<&str>| -> Result<(bool, String), String> {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(dir)
            .args(args)
            // File names are names, never patterns.
            .env("GIT_LITERAL_PATHSPECS", "1")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot run git ({e})"))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|e| format!("cannot talk to git ({e})"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("cannot run git ({e})"))?;
        let text = if out.status.success() {
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        } else {
            String::from_utf8_lossy(&out.stderr).trim().to_owned()
        };
        Ok((out.status.success(), text))
    };
    let (in_tree, why) = git(&["rev-parse", "--is-inside-work-tree"], None)?;
    if !in_tree {
        return Err(format!(
            "{} is not in a git work tree ({})",
            file.display(),
            why.lines().next().unwrap_or("git said no")
        ));
    }
    let (has_head, commit) = git(&["rev-parse", "--verify", "-q", "HEAD"], None)?;
    let commit = if has_head { commit } else { String::new() };
    let (_, prefix) = git(&["rev-parse", "--show-prefix"], None)?;
    let path = format!("{prefix}{name}");
    let (tracked, committed) = if has_head {
        git(
            &["rev-parse", "--verify", "-q", &format!("HEAD:./{name}")],
            None,
        )?
    } else {
        (false, String::new())
    };
    // The blob of what was loaded, byte for byte (no filters).
    let (_, loaded) = git(&["hash-object", "--no-filters", "--stdin"], Some(text))?;
    Ok(GitState {
        commit,
        path,
        tracked,
        dirty: !tracked || committed != loaded,
    })
}

/// Refuses `file` unless it is committed and unchanged; names the file and
/// what to do.
pub fn require_clean(file: &Path, state: &Result<GitState, String>) -> Result<(), LoadError> {
    let shown = file.display();
    match state {
        Err(why) => Err(LoadError::Input(format!(
            "--require-clean: cannot tell whether the script {shown} is committed: {why}"
        ))),
        Ok(g) if !g.tracked => Err(LoadError::Input(format!(
            "--require-clean: the script {shown} is not committed in git; commit it, then load"
        ))),
        Ok(g) if g.dirty => Err(LoadError::Input(format!(
            "--require-clean: the script {shown} has uncommitted changes; commit them (git commit {}), then load",
            g.path
        ))),
        Ok(_) => Ok(()),
    }
}

/// Keeps the record of a finished load on its step; returns it.
pub async fn keep(
    store: &taskfleet::store::Store,
    report: &LoadReport,
    sheet: &str,
    script_file: Option<&Path>,
    git: Option<GitState>,
) -> anyhow::Result<LoadRecord> {
    use anyhow::Context as _;
    use taskfleet::store::TaskStore as _;
    let record = record(report, sheet, script_file, git);
    store
        .record_load(&report.step, &record)
        .await
        .context("the tasks are loaded, but the record of this load could not be kept")?;
    Ok(record)
}

/// The record of a finished load.
pub fn record(
    report: &LoadReport,
    sheet: &str,
    script_file: Option<&Path>,
    git: Option<GitState>,
) -> LoadRecord {
    LoadRecord {
        at: Timestamp::now(),
        user: user(),
        host: host(),
        command: std::env::args().collect(),
        sheet: sheet.to_owned(),
        sheet_sha256: report.sheet_sha256.clone(),
        rows: report.rows as u64,
        loaded: report.loaded as u64,
        skipped_existing: report.skipped_existing as u64,
        replaced: report.replaced as u64,
        script_file: script_file.map(|p| {
            std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.to_owned())
                .display()
                .to_string()
        }),
        script_sha256: report.script_sha256.clone(),
        git,
    }
}

/// This host's name.
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Who runs this: `$USER`, `$LOGNAME`, else the user id.
pub fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata("/proc/self")
                .map_or_else(|_| "unknown".to_owned(), |m| format!("uid {}", m.uid()))
        })
}
