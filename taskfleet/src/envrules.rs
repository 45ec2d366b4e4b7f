//! What a task's script finds in its environment, decided in one place.
//!
//! A script runs under `bash` with exactly these variables, in this order
//! (a later one wins):
//!
//! 1. [`INHERITED`]: the few names of the agent's own environment that a
//!    script needs to behave like a login on the host (search path, home,
//!    locale, time zone, user), when the agent has them;
//! 2. the names the operator passes through explicitly (`agent
//!    --pass-env NAME`, `taskctl launch --local --pass-env NAME`);
//! 3. the task's sheet row, one variable per column;
//! 4. [`AGENT_NAMES`]: what the agent sets for each attempt.
//!
//! Nothing else of the agent's environment (its AWS credentials, its
//! `TASKFLEET_*` settings) reaches a script unless the operator names it.
//!
//! A sheet column is refused at load when its variable name is covered by
//! [`REFUSED`] ([`refusal`] says why): names the agent sets or inherits,
//! names that change how `bash` runs a script (`SHELLOPTS=noexec` turns
//! every script into a no-op; `SHELLOPTS=xtrace` with `PS4='$(cmd)'` runs
//! code), names the dynamic loader and the C library read in every program
//! (`LD_PRELOAD`), names interpreters read to load code (`PERL5OPT`,
//! `PYTHONPATH`), and credentials and settings (`AWS_*`, `TASKFLEET_*`).
//! The README lists the same rules; a test checks that they agree.
//!
//! A row must also fit the kernel's limits for `execve`, or its script
//! could never start: each `NAME=value` string at most
//! [`MAX_ENV_STRING_BYTES`], the whole row at most [`MAX_ROW_ENV_BYTES`]
//! ([`size_problem`]).

use std::collections::BTreeMap;

/// Names of the agent's own environment that scripts get, when set.
pub const INHERITED: [&str; 8] = [
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME",
];

/// The task id, set by the agent.
pub const TASK_ID: &str = "TASK_ID";
/// The step, set by the agent.
pub const STEP: &str = "STEP";
/// The attempt number, set by the agent.
pub const ATTEMPT: &str = "ATTEMPT";
/// The attempt's work directory, where the script runs; set by the agent.
pub const TASK_WORKDIR: &str = "TASK_WORKDIR";
/// A temporary directory of the attempt's own, set by the agent.
pub const TMPDIR: &str = "TMPDIR";

/// Names the agent sets for every attempt.
pub const AGENT_NAMES: [&str; 5] = [TASK_ID, STEP, ATTEMPT, TASK_WORKDIR, TMPDIR];

/// A set of names a column may not become, and why.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Names covered exactly.
    pub names: &'static [&'static str],
    /// Names covered by how they begin.
    pub prefixes: &'static [&'static str],
    /// Why, as the end of "would become the environment variable X, ...".
    pub why: &'static str,
}

impl Rule {
    /// Whether `name` is covered.
    pub fn covers(&self, name: &str) -> bool {
        self.names.contains(&name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }
}

/// Every name a sheet column may not become.
pub const REFUSED: [Rule; 7] = [
    Rule {
        names: &AGENT_NAMES,
        prefixes: &[],
        why: "which the agent sets itself for every attempt",
    },
    Rule {
        names: &INHERITED,
        prefixes: &[],
        why: "which scripts get from the agent's own environment",
    },
    Rule {
        names: &[],
        prefixes: &["AWS_"],
        why: "which AWS tools read for credentials, region and endpoints",
    },
    Rule {
        names: &[],
        prefixes: &["TASKFLEET_"],
        why: "which taskfleet reserves for its own settings",
    },
    Rule {
        names: &[
            "SHELLOPTS",
            "ENV",
            "IFS",
            "CDPATH",
            "GLOBIGNORE",
            "GLOBSORT",
            "EXECIGNORE",
            "FUNCNEST",
            "POSIXLY_CORRECT",
            "PS0",
            "PS1",
            "PS2",
            "PS3",
            "PS4",
            "PROMPT_COMMAND",
            "HISTFILE",
            "HISTFILESIZE",
            "HISTSIZE",
            "HISTCONTROL",
            "HISTIGNORE",
            "HISTTIMEFORMAT",
            "INPUTRC",
            "MAIL",
            "MAILCHECK",
            "MAILPATH",
            "TMOUT",
            "TIMEFORMAT",
            "TEXTDOMAIN",
            "TEXTDOMAINDIR",
            "OPTIND",
            "OPTERR",
            "RANDOM",
            "SRANDOM",
            "SECONDS",
            "LINENO",
            "SHELL",
            "SHLVL",
            "PWD",
            "OLDPWD",
        ],
        prefixes: &["BASH", "LC_"],
        why: "which bash reads and which changes how it runs the script",
    },
    Rule {
        names: &[
            "GCONV_PATH",
            "GETCONF_DIR",
            "GLIBC_TUNABLES",
            "HOSTALIASES",
            "LANGUAGE",
            "LOCALDOMAIN",
            "LOCPATH",
            "NIS_PATH",
            "NLSPATH",
            "RESOLV_HOST_CONF",
            "RES_OPTIONS",
            "TZDIR",
        ],
        prefixes: &["LD_", "MALLOC_"],
        why: "which the dynamic loader or the C library reads in every program the script starts",
    },
    Rule {
        names: &[
            "PERLLIB",
            "RUBYOPT",
            "RUBYLIB",
            "NODE_OPTIONS",
            "NODE_PATH",
            "JAVA_TOOL_OPTIONS",
            "_JAVA_OPTIONS",
            "JDK_JAVA_OPTIONS",
        ],
        prefixes: &["PYTHON", "PERL5", "LUA_INIT", "R_PROFILE", "R_ENVIRON"],
        why: "which an interpreter the script may start (Python, Perl, Ruby, Node.js, Java, \
              Lua, R) reads to load code",
    },
];

/// Why a column may not become the environment variable `name`, if it
/// may not.
pub fn refusal(name: &str) -> Option<&'static str> {
    REFUSED.iter().find(|r| r.covers(name)).map(|r| r.why)
}

/// The longest `NAME=value` string `execve` accepts, its terminating NUL
/// included: Linux's `MAX_ARG_STRLEN`, 32 pages of 4 KiB.
pub const MAX_ENV_STRING_BYTES: usize = 131_072;

/// Bytes of a pointer in `execve`'s environment array, which counts
/// against the same limit as the strings.
pub const ENV_POINTER_BYTES: usize = 8;

/// The most a task's row may take as environment: 1 MiB, counting each
/// `NAME=value` string, its NUL and its pointer as the kernel does. Linux
/// allows a program's arguments and environment together a quarter of the
/// stack limit, 2 MiB with the usual 8 MiB; the other half is left for
/// what the agent adds (its names, inherited and passed-through variables,
/// the script's path) and for hosts with a smaller stack limit.
pub const MAX_ROW_ENV_BYTES: usize = 1 << 20;

/// Bytes `NAME=value` takes as one environment string, NUL included.
pub fn env_string_bytes(name: &str, value: &str) -> usize {
    name.len() + 1 + value.len() + 1
}

/// A row that the kernel would refuse to start a script with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeProblem {
    /// One `NAME=value` string is over [`MAX_ENV_STRING_BYTES`].
    String {
        /// The variable.
        name: String,
        /// Its size as an environment string.
        bytes: usize,
    },
    /// The row together is over [`MAX_ROW_ENV_BYTES`].
    Row {
        /// The row's size as environment.
        bytes: usize,
    },
}

/// Whether a row (variable name to value) fits the kernel's limits; the
/// first string over its limit, else the whole row if it is over.
pub fn size_problem(env: &BTreeMap<String, String>) -> Option<SizeProblem> {
    let mut total = 0;
    for (name, value) in env {
        let bytes = env_string_bytes(name, value);
        if bytes > MAX_ENV_STRING_BYTES {
            return Some(SizeProblem::String {
                name: name.clone(),
                bytes,
            });
        }
        total += bytes + ENV_POINTER_BYTES;
    }
    (total > MAX_ROW_ENV_BYTES).then_some(SizeProblem::Row { bytes: total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_change_the_shell_or_leak_credentials_are_refused() {
        for name in [
            "SHELLOPTS",
            "BASHOPTS",
            "BASH_ENV",
            "BASH_FUNC_X",
            "PS4",
            "PROMPT_COMMAND",
            "IFS",
            "LD_PRELOAD",
            "LC_COLLATE",
            "GLIBC_TUNABLES",
            "MALLOC_CHECK_",
            "PYTHONPATH",
            "PERL5OPT",
            "AWS_SECRET_ACCESS_KEY",
            "TASKFLEET_TABLE",
            "TASK_ID",
            "TMPDIR",
            "PATH",
            "LOGNAME",
        ] {
            assert!(refusal(name).is_some(), "{name} should be refused");
        }
        for name in [
            "SAMPLE",
            "FASTQ_1",
            "HISTOLOGY",
            "PS5",
            "ENVIRONMENT",
            "AWS",
        ] {
            assert_eq!(refusal(name), None, "{name} should be allowed");
        }
    }

    #[test]
    fn the_agents_names_and_the_inherited_ones_are_refused_as_columns() {
        for name in AGENT_NAMES.iter().chain(&INHERITED) {
            assert!(refusal(name).is_some(), "{name}");
        }
    }

    #[test]
    fn one_string_may_take_128_kib_with_its_nul() {
        let at_limit = "v".repeat(MAX_ENV_STRING_BYTES - "BIG=".len() - 1);
        let row = BTreeMap::from([("BIG".to_owned(), at_limit.clone())]);
        assert_eq!(size_problem(&row), None);
        let row = BTreeMap::from([("BIG".to_owned(), at_limit + "v")]);
        assert_eq!(
            size_problem(&row),
            Some(SizeProblem::String {
                name: "BIG".into(),
                bytes: MAX_ENV_STRING_BYTES + 1
            })
        );
    }

    #[test]
    fn a_row_may_take_one_mib_in_all() {
        let value = "v".repeat(100_000);
        let row: BTreeMap<String, String> = (0..11)
            .map(|i| (format!("C{i:02}"), value.clone()))
            .collect();
        assert_eq!(
            size_problem(&row),
            Some(SizeProblem::Row {
                bytes: 11 * (4 + 100_000 + 1 + ENV_POINTER_BYTES)
            })
        );
        let row: BTreeMap<String, String> = row.into_iter().take(10).collect();
        assert_eq!(size_problem(&row), None);
    }

    #[test]
    fn the_readme_lists_every_refused_name_and_prefix() {
        let readme = include_str!("../../README.md");
        for rule in &REFUSED {
            for name in rule.names {
                assert!(
                    readme.contains(&format!("`{name}`")),
                    "README lacks `{name}`"
                );
            }
            for prefix in rule.prefixes {
                assert!(
                    readme.contains(&format!("`{prefix}*`")),
                    "README lacks `{prefix}*`"
                );
            }
        }
        for name in INHERITED {
            assert!(
                readme.contains(&format!("`{name}`")),
                "README lacks `{name}`"
            );
        }
    }
}
