//! A real `redis-server` for integration tests, run as a child process on a free loopback
//! port, with no persistence, and always killed when the [`RedisServer`] is dropped (also
//! when the test panics).
//!
//! ```ignore
//! let Some(redis) = RedisServer::start() else { return };
//! assert_eq!(redis.command(&["PING"]), "+PONG\r\n");
//! ```
//!
//! Where `redis-server` is missing, [`RedisServer::start`] prints a loud skip notice and
//! returns `None`, unless `TOWER_GATEWAY_REQUIRE_REDIS=1` (as in `.ci/run`), where it panics.
//! `TOWER_GATEWAY_REDIS_SERVER` picks the binary (a path, or a name looked up on `PATH`).
//!
//! Only std: signals go through the `kill` command, replies are parsed here.
#![allow(
    clippy::disallowed_types,
    reason = "a real process is waited for on the real clock: tokio's Instant would not \
              move in a paused-clock test while this blocks its thread"
)]

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Set to `1` to make a missing `redis-server` fail the test instead of skipping it (CI).
pub const REQUIRE_ENV: &str = "TOWER_GATEWAY_REQUIRE_REDIS";

/// The `redis-server` to run: a path, or a name looked up on `PATH` (default
/// `redis-server`). Pointing it at a missing file exercises the skip path.
pub const BINARY_ENV: &str = "TOWER_GATEWAY_REDIS_SERVER";

/// How long a started server has to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many fresh ports [`RedisServer::start`] tries when the server exits at once (most
/// likely because something took the port between probing and binding).
const START_ATTEMPTS: usize = 5;

/// How long [`RedisServer::restart`] keeps retrying while its port is busy.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);

/// The connect, write and read timeout of [`RedisServer::command`].
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Tells the log files of the servers of one test binary apart.
static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// A `redis-server` child process listening on `127.0.0.1` at [`RedisServer::port`], with
/// no persistence (`--save "" --appendonly no`): its data lives until it is killed.
///
/// Dropping it kills the process (SIGKILL) and waits for it; if the thread is panicking,
/// the server's log is printed first.
#[derive(Debug)]
pub struct RedisServer {
    /// The binary that was found and is (re)started.
    binary: PathBuf,
    /// The loopback port, kept across [`RedisServer::restart`].
    port: u16,
    /// The running process; `None` after [`RedisServer::kill`].
    child: Option<Child>,
    /// Where the server's stdout and stderr go (appended to on every restart).
    log: PathBuf,
}

/// One RESP2 reply, as [`RedisServer::query`] decodes it. Strings are decoded as lossy
/// UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a simple string, without the `+`.
    Simple(String),
    /// `-ERR ...`: an error, without the `-`.
    Error(String),
    /// `:3`: an integer.
    Integer(i64),
    /// `$3\r\nbar`: a bulk string; `None` for the null bulk string `$-1`.
    Bulk(Option<String>),
    /// `*2...`: an array; `None` for the null array `*-1`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The strings of an array of bulk or simple strings (e.g. the reply to `KEYS *`),
    /// in the server's order; an empty or null array gives an empty vector.
    ///
    /// # Panics
    /// If the reply is not such an array.
    pub fn into_strings(self) -> Vec<String> {
        match self {
            Reply::Array(None) => Vec::new(),
            Reply::Array(Some(items)) => items
                .into_iter()
                .map(|item| match item {
                    Reply::Bulk(Some(s)) | Reply::Simple(s) => s,
                    other => panic!("expected a string in the array, got {other:?}"),
                })
                .collect(),
            other => panic!("expected an array of strings, got {other:?}"),
        }
    }
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits (up to 10 s) until it
    /// answers `PING`.
    ///
    /// Returns `None`, after a loud notice on stderr, if there is no `redis-server` (see
    /// [`BINARY_ENV`]), so that a test can skip with
    /// `let Some(redis) = RedisServer::start() else { return };`.
    ///
    /// # Panics
    /// If there is no `redis-server` and `TOWER_GATEWAY_REQUIRE_REDIS=1`; if it cannot be
    /// run; if it exits at once on every one of a few fresh ports; or if it does not
    /// answer within 10 s.
    pub fn start() -> Option<RedisServer> {
        let binary = match find_binary() {
            Ok(binary) => binary,
            Err(missing) => {
                if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                    panic!(
                        "redis-server not found but {REQUIRE_ENV}=1 requires it ({missing}); \
                         install it (apt-get install redis-server) or see .ci/run"
                    );
                }
                // Straight to the stderr stream rather than `eprintln!`, which the test
                // harness captures and shows only for failing tests: a skip must be seen.
                let _ = writeln!(
                    io::stderr(),
                    "\n*** SKIPPED: redis-server is not installed ({missing}); install it \
                     (apt-get install redis-server) or see .ci/run ***\n"
                );
                return None;
            }
        };
        let log = std::env::temp_dir().join(format!(
            "tower-gateway-redis-{}-{}.log",
            std::process::id(),
            SERVERS.fetch_add(1, Ordering::Relaxed)
        ));
        File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create the redis log {}: {e}", log.display()));
        let mut server = RedisServer {
            binary,
            port: 0,
            child: None,
            log,
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return Some(server),
                Err(why) => failures.push(format!("port {}: {why}", server.port)),
            }
        }
        panic!(
            "redis-server ({}) failed to start {START_ATTEMPTS} times:\n{}",
            server.binary.display(),
            failures.join("\n")
        );
    }

    /// `redis://127.0.0.1:PORT/`, for a redis client.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The loopback port the server listens on (the same after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The process ID of the running server; `None` after [`RedisServer::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (also when paused) and waits for it to exit, so that
    /// its port refuses connections afterwards. Its data is gone. Does nothing if it is
    /// not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
    }

    /// Starts a new, empty server on the same port (killing the running one first, if
    /// any) and waits until it answers. Retries for a few seconds while the port is busy.
    ///
    /// # Panics
    /// If the port stays busy, or the new server does not answer within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + RESTART_PORT_WAIT;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
                Err(why) => panic!(
                    "could not restart redis-server on 127.0.0.1:{} within {RESTART_PORT_WAIT:?}: {why}",
                    self.port
                ),
            }
        }
    }

    /// Freezes the server with SIGSTOP: connections are still accepted by the kernel, but
    /// nothing is answered until [`RedisServer::resume`] (a hung, not a dead, server).
    ///
    /// # Panics
    /// If the server is not running or the signal cannot be sent.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a server frozen by [`RedisServer::pause`] go on (SIGCONT); it then answers what
    /// was sent meanwhile.
    ///
    /// # Panics
    /// If the server is not running or the signal cannot be sent.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Sends one command (e.g. `&["SET", "k", "v"]`) on a new connection and returns the
    /// raw reply as it came, e.g. `"+OK\r\n"`, `":1\r\n"`, `"$1\r\nv\r\n"`, `"$-1\r\n"`,
    /// `"*1\r\n$1\r\nk\r\n"`, `"-ERR ...\r\n"` (an error reply is returned, not a panic).
    ///
    /// # Panics
    /// On a connection error or after 5 s without a complete reply.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args, COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("redis command {args:?} on {}: {e}", self.addr()))
    }

    /// [`RedisServer::command`], with `timeout` for connecting, writing and reading, and
    /// the I/O error returned (a read timeout is `WouldBlock` or `TimedOut`).
    pub fn try_command(&self, args: &[&str], timeout: Duration) -> io::Result<String> {
        exchange(self.addr(), args, timeout).map(|(raw, _)| raw)
    }

    /// [`RedisServer::command`], decoded: e.g. `redis.query(&["KEYS", "*"]).into_strings()`.
    ///
    /// # Panics
    /// On a connection error or after 5 s without a complete reply.
    pub fn query(&self, args: &[&str]) -> Reply {
        exchange(self.addr(), args, COMMAND_TIMEOUT)
            .map(|(_, reply)| reply)
            .unwrap_or_else(|e| panic!("redis command {args:?} on {}: {e}", self.addr()))
    }

    /// Runs the binary on `self.port` and waits until it answers as itself. `Err` if it
    /// exited first (most likely: the port is taken); panics if it hangs.
    fn launch(&mut self) -> Result<(), String> {
        let log = File::options()
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open the redis log {}: {e}", self.log.display()));
        let stdout = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the redis log handle: {e}"));
        let port = self.port.to_string();
        let dir = std::env::temp_dir();
        let mut child = Command::new(&self.binary)
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args([
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
            ])
            .args(["--loglevel", "warning", "--dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!(
                        "redis-server exited ({status}) before answering; log:\n{}",
                        self.log_tail()
                    ));
                }
                Ok(None) => {}
                Err(e) => {
                    kill_and_wait(&mut child);
                    panic!("cannot check on redis-server: {e}");
                }
            }
            if let Some(pid) = answering_pid(self.addr()) {
                if pid == child.id() {
                    self.child = Some(child);
                    return Ok(());
                }
                // Another redis-server holds the port: ours cannot bind it.
                kill_and_wait(&mut child);
                return Err(format!(
                    "the port is served by another redis-server (pid {pid})"
                ));
            }
            if Instant::now() >= deadline {
                kill_and_wait(&mut child);
                panic!(
                    "redis-server ({}) on 127.0.0.1:{} did not answer PING within \
                     {READY_TIMEOUT:?}; log:\n{}",
                    self.binary.display(),
                    self.port,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGSTOP or SIGCONT to the running server through the `kill` command (the
    /// shell's builtin if there is no `kill` binary).
    fn signal(&self, signal: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("redis-server on port {} is not running", self.port))
            .to_string();
        let status = match Command::new("kill").args(["-s", signal, &pid]).status() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Command::new("sh")
                .args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal, &pid])
                .status(),
            other => other,
        };
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => panic!("kill -s {signal} {pid} failed: {status}"),
            Err(e) => panic!("cannot run kill -s {signal} {pid}: {e}"),
        }
    }

    /// The last lines of the server's log, or `(empty)`.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            return "(empty)".to_owned();
        }
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "redis-server log (127.0.0.1:{}):\n{}",
                self.port,
                self.log_tail()
            );
        }
        let _ = fs::remove_file(&self.log);
    }
}

/// The `redis-server` to run, or a description of what was not found.
fn find_binary() -> Result<PathBuf, String> {
    let (name, how) = match std::env::var_os(BINARY_ENV).filter(|v| !v.is_empty()) {
        Some(name) => {
            let how = format!("{BINARY_ENV}={}", name.to_string_lossy());
            (name, how)
        }
        None => (
            OsString::from("redis-server"),
            "redis-server on PATH".to_owned(),
        ),
    };
    let name = PathBuf::from(name);
    if name.components().count() > 1 {
        return if is_executable(&name) {
            Ok(name)
        } else {
            Err(format!("no executable {how}"))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("no {how}"))
}

/// Whether `path` is a file with an execute bit.
fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A loopback port that was free a moment ago (never redis's default 6379).
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("no local address: {e}"))
            .port();
        if port != 6379 {
            return port;
        }
    }
}

/// If a redis server answers `PING` with `+PONG` at `addr`, its process ID (from `INFO
/// server`), so that the caller knows whether it is the one it started.
fn answering_pid(addr: SocketAddr) -> Option<u32> {
    let (_, pong) = exchange(addr, &["PING"], Duration::from_millis(500)).ok()?;
    if pong != Reply::Simple("PONG".to_owned()) {
        return None;
    }
    match exchange(addr, &["INFO", "server"], Duration::from_millis(500)).ok()? {
        (_, Reply::Bulk(Some(info))) => info
            .lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok()),
        _ => None,
    }
}

/// Sends `args` as a RESP array of bulk strings on a new connection and reads one reply:
/// its raw text and its decoded form.
fn exchange(addr: SocketAddr, args: &[&str], timeout: Duration) -> io::Result<(String, Reply)> {
    assert!(!args.is_empty(), "a redis command needs at least its name");
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    (&stream).write_all(&request)?;
    let mut reader = BufReader::new(stream);
    let mut raw = Vec::new();
    let reply = read_reply(&mut reader, &mut raw)?;
    Ok((String::from_utf8_lossy(&raw).into_owned(), reply))
}

/// Reads one RESP2 reply (nested arrays included), appending its bytes to `raw`.
fn read_reply(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Reply> {
    let line = read_line(reader, raw)?;
    let Some(kind) = line.chars().next() else {
        return Err(invalid("an empty reply line".to_owned()));
    };
    let rest = &line[kind.len_utf8()..];
    let number = || -> io::Result<i64> {
        rest.parse()
            .map_err(|_| invalid(format!("a bad number in {line:?}")))
    };
    match kind {
        '+' => Ok(Reply::Simple(rest.to_owned())),
        '-' => Ok(Reply::Error(rest.to_owned())),
        ':' => Ok(Reply::Integer(number()?)),
        '$' => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Reply::Bulk(None));
            };
            let mut data = vec![0; len + 2];
            reader.read_exact(&mut data)?;
            raw.extend_from_slice(&data);
            if !data.ends_with(b"\r\n") {
                return Err(invalid(format!(
                    "a bulk string of {len} bytes without CRLF"
                )));
            }
            data.truncate(len);
            Ok(Reply::Bulk(Some(
                String::from_utf8_lossy(&data).into_owned(),
            )))
        }
        '*' => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Reply::Array(None));
            };
            let items = (0..len)
                .map(|_| read_reply(reader, raw))
                .collect::<io::Result<_>>()?;
            Ok(Reply::Array(Some(items)))
        }
        _ => Err(invalid(format!("an unknown reply type in {line:?}"))),
    }
}

/// Reads one CRLF-terminated line, appending it to `raw`, and returns it without the CRLF.
fn read_line(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<String> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed before a complete reply",
        ));
    }
    raw.extend_from_slice(&line);
    if !line.ends_with(b"\r\n") {
        return Err(invalid("a reply line without CRLF".to_owned()));
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// An `InvalidData` error about the reply.
fn invalid(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad redis reply: {what}"),
    )
}

/// SIGKILL (what `Child::kill` sends on Unix) and reap, so the port is free on return.
fn kill_and_wait(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
