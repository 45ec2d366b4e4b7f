//! A TCP relay in front of a store endpoint that a test can cut and
//! restore, to take one worker off the network while others still reach
//! the store.
//!
//! It runs on plain threads of the test process, not on the test's async
//! runtime, so a test that blocks its runtime (waiting for a process) does
//! not stall the relay. Cutting it has the effect of a stopped (SIGSTOP) relay
//! process, without a process of its own: the kernel still completes new
//! connections (they wait in the listen backlog), but nothing is accepted,
//! read or forwarded until [`Proxy::restore`]. Bytes already read when the
//! cut came are held, not forwarded. Clients see requests that hang, never
//! an error, as behind a broken network path.
//!
//! [`Proxy::refuse`] is the other kind of outage: every open connection is
//! closed and new ones are closed as soon as they come, so requests fail
//! at once (an endpoint that is down), and nothing sent meanwhile reaches
//! the store late.
//!
//! [`Proxy::hold_requests`] stops one kind of request: a request whose
//! first bytes name it (an `X-Amz-Target` such as `TransactWriteItems`)
//! is held until [`Proxy::restore`], everything else passes; a test waits
//! until [`Proxy::held`] counts one, to do something between
//! a client's reads and its write.
//!
//! [`Proxy::delay_answers`] is a slow path: every read of an answer is
//! held that long before it is passed on, as from a store far away or
//! overloaded. A small answer (one read) is that much late; a large one,
//! read in pieces of up to 16 KiB, is late by as many delays.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

/// A relay from a loopback port to `upstream`.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// The relay's switches, each one an outage a test turns on and off.
#[derive(Default)]
#[allow(clippy::struct_excessive_bools)]
struct Gate {
    cut: bool,
    refuse: bool,
    drop_answers: bool,
    closed: bool,
    answer_delay: std::time::Duration,
    /// Requests containing these bytes wait.
    hold: Option<Vec<u8>>,
    /// Requests held so far.
    held: usize,
}

struct Shared {
    upstream: SocketAddr,
    gate: Mutex<Gate>,
    changed: Condvar,
    streams: Mutex<Vec<TcpStream>>,
}

impl Shared {
    /// Blocks while the relay is cut; false once it is closed.
    fn pass(&self) -> bool {
        let mut gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        while gate.cut && !gate.closed {
            gate = self
                .changed
                .wait(gate)
                .unwrap_or_else(PoisonError::into_inner);
        }
        !gate.closed
    }

    fn set(&self, f: impl FnOnce(&mut Gate)) {
        f(&mut self.gate.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_all();
    }

    fn keep(&self, stream: &TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            self.streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(clone);
        }
    }
}

impl Proxy {
    /// Relays a free loopback port to `upstream` (`http://host:port` or
    /// `host:port`).
    pub fn start(upstream: &str) -> Self {
        let hostport = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream = hostport
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("proxy upstream {hostport:?} is not host:port"));
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy's loopback port");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            gate: Mutex::new(Gate::default()),
            changed: Condvar::new(),
            streams: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(&listener, &shared))
        };
        Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`, to give a client instead of the upstream.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops forwarding: open and new connections hang.
    pub fn cut(&self) {
        self.shared.set(|g| g.cut = true);
    }

    /// Closes every connection and refuses new ones until [`Proxy::restore`].
    pub fn refuse(&self) {
        self.shared.set(|g| g.refuse = true);
        for s in self
            .shared
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Forwards requests but throws the answers away: the store carries a
    /// request out and the client never hears of it (an answer lost on the
    /// way back), until [`Proxy::restore`].
    pub fn drop_answers(&self) {
        self.shared.set(|g| g.drop_answers = true);
    }

    /// Holds every read of an answer for `delay` before passing it on,
    /// until [`Proxy::restore`].
    pub fn delay_answers(&self, delay: std::time::Duration) {
        self.shared.set(|g| g.answer_delay = delay);
    }

    /// Holds every request whose bytes contain `marker` (within one read
    /// of the connection, as a request's headers are), until
    /// [`Proxy::restore`]; other requests pass.
    pub fn hold_requests(&self, marker: &str) {
        self.shared
            .set(|g| g.hold = Some(marker.as_bytes().to_vec()));
    }

    /// Requests held so far (by [`Proxy::hold_requests`]).
    pub fn held(&self) -> usize {
        self.shared
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held
    }

    /// Forwards again, held bytes first.
    pub fn restore(&self) {
        self.shared.set(|g| {
            g.hold = None;
            g.cut = false;
            g.refuse = false;
            g.drop_answers = false;
            g.answer_delay = std::time::Duration::ZERO;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.set(|g| g.closed = true);
        for s in self
            .shared
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the acceptor out of accept().
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        if !shared.pass() {
            return;
        }
        let Ok((client, _)) = listener.accept() else {
            continue;
        };
        // A connection accepted just as the cut came waits for the restore.
        if !shared.pass() {
            return;
        }
        if shared
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refuse
        {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(shared.upstream) else {
            // Upstream down: the client sees the connection close.
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        shared.keep(&client);
        shared.keep(&server);
        for (from, to, answers) in [(&client, &server, false), (&server, &client, true)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let shared = shared.clone();
            std::thread::spawn(move || pump(from, to, answers, &shared));
        }
    }
}

/// Copies one direction until either side closes or the proxy is dropped;
/// `answers` is the direction from the store to the client.
fn pump(mut from: TcpStream, mut to: TcpStream, answers: bool, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if !shared.pass() {
            return;
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        if !shared.pass() {
            return;
        }
        if !answers && !hold(shared, &buf[..n]) {
            return;
        }
        let (dropped, delay) = if answers {
            let gate = shared.gate.lock().unwrap_or_else(PoisonError::into_inner);
            (gate.drop_answers, gate.answer_delay)
        } else {
            (false, std::time::Duration::ZERO)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if !dropped && to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Waits while a request of these bytes is to be held; false once the
/// proxy is closed.
fn hold(shared: &Shared, bytes: &[u8]) -> bool {
    let mut gate = shared.gate.lock().unwrap_or_else(PoisonError::into_inner);
    let matches = |g: &Gate| {
        g.hold
            .as_ref()
            .is_some_and(|m| bytes.windows(m.len()).any(|w| w == m.as_slice()))
    };
    if !matches(&gate) {
        return true;
    }
    gate.held += 1;
    shared.changed.notify_all();
    while matches(&gate) && !gate.closed {
        gate = shared
            .changed
            .wait(gate)
            .unwrap_or_else(PoisonError::into_inner);
    }
    !gate.closed
}
