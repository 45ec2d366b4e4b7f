//! A private DynamoDB Local: one JVM per test, on a free loopback port.
//!
//! A fault test that makes the store hang (SIGSTOP of the JVM: requests are
//! accepted by the kernel and then never answered, as behind a broken
//! network path) must not hang the other tests, which share the emulator
//! `scripts/test` starts. So it starts its own here. The emulator is killed
//! when the value is dropped, frozen or not.
//!
//! The emulator's files come from `TASKFLEET_DYNAMODB_LOCAL_DIR`, which
//! `scripts/test` exports; without it the test fails and says so.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a JVM may take to listen on a loaded machine.
const START_LIMIT: Duration = Duration::from_secs(120);

/// A DynamoDB Local process of this test's own.
pub struct DynamoLocal {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl DynamoLocal {
    /// Starts the emulator and waits until it listens.
    #[track_caller]
    pub fn start() -> Self {
        let home = emulator_dir();
        let mut last_log = String::new();
        // A port found free can be taken before the JVM binds it; try again
        // on another one.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = dir.path().join("dynamodb-local.log");
            let port = free_port();
            let child = Command::new("java")
                .current_dir(&home)
                .args([
                    "-Xmx512m",
                    "-Djava.library.path=./DynamoDBLocal_lib",
                    "-jar",
                    "DynamoDBLocal.jar",
                    "-inMemory",
                    "-disableTelemetry",
                    "-port",
                    &port.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).expect("emulator log"))
                .stderr(std::fs::File::create(dir.path().join("stderr")).expect("emulator log"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start `java` for DynamoDB Local: {e}"));
            let mut emulator = Self {
                child,
                port,
                log,
                _dir: dir,
            };
            match emulator.wait_listening() {
                Ok(()) => return emulator,
                Err(output) => last_log = output,
            }
        }
        panic!("DynamoDB Local did not start on a free port (3 tries); its output:\n{last_log}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The JVM's process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    /// Stops the JVM (SIGSTOP): connections are still accepted by the
    /// kernel, requests hang unanswered.
    pub fn freeze(&self) {
        kill(Pid::from_raw(self.pid()), Signal::SIGSTOP).expect("SIGSTOP DynamoDB Local");
    }

    /// Lets a frozen JVM run again (SIGCONT).
    pub fn thaw(&self) {
        kill(Pid::from_raw(self.pid()), Signal::SIGCONT).expect("SIGCONT DynamoDB Local");
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for DynamoDB Local") {
                return Err(format!("exited with {status}:\n{}", self.output()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "did not listen on port {} within {START_LIMIT:?}:\n{}",
                    self.port,
                    self.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn output(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "{}{}",
            read(&self.log),
            read(&self.log.with_file_name("stderr"))
        )
    }
}

impl Drop for DynamoLocal {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the emulator's jar is, or a panic that says how to get it.
#[track_caller]
fn emulator_dir() -> PathBuf {
    let dir = std::env::var_os("TASKFLEET_DYNAMODB_LOCAL_DIR").unwrap_or_else(|| {
        panic!(
            "TASKFLEET_DYNAMODB_LOCAL_DIR is not set: this test starts a DynamoDB Local of its own \
             from that directory. Run the tests with `bash scripts/test`, which installs it and \
             sets the variable."
        )
    });
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("DynamoDBLocal.jar").is_file(),
        "TASKFLEET_DYNAMODB_LOCAL_DIR={} holds no DynamoDBLocal.jar; `bash scripts/test` installs it",
        dir.display()
    );
    dir
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}
