//! Checks the `redis-server` test harness (tests/common/redis.rs) itself: commands and
//! replies, kill, restart on the same port, pause and resume, and that no server outlives
//! its `RedisServer`, even when the test panics.

mod common;

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::Duration;

use common::redis::{RedisServer, Reply};

/// Whether the process `pid` still exists (a reaped child has no `/proc` entry).
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn commands_kill_restart_pause_resume() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let port = redis.port();
    assert_ne!(port, 6379);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
    assert_eq!(redis.addr().to_string(), format!("127.0.0.1:{port}"));

    assert_eq!(redis.command(&["PING"]), "+PONG\r\n");
    assert_eq!(redis.command(&["SET", "foo", "bar"]), "+OK\r\n");
    assert_eq!(redis.command(&["GET", "foo"]), "$3\r\nbar\r\n");
    assert_eq!(redis.command(&["GET", "missing"]), "$-1\r\n");
    assert_eq!(redis.command(&["SET", "empty", ""]), "+OK\r\n");
    assert_eq!(redis.command(&["GET", "empty"]), "$0\r\n\r\n");
    assert_eq!(redis.command(&["DBSIZE"]), ":2\r\n");
    assert_eq!(redis.command(&["INCRBY", "n", "-7"]), ":-7\r\n");
    assert_eq!(redis.command(&["RPUSH", "list", "a b", "c\r\nd"]), ":2\r\n");
    assert_eq!(
        redis.command(&["LRANGE", "list", "0", "-1"]),
        "*2\r\n$3\r\na b\r\n$4\r\nc\r\nd\r\n"
    );
    assert_eq!(redis.command(&["LRANGE", "nothing", "0", "-1"]), "*0\r\n");
    assert!(redis.command(&["NOSUCHCOMMAND"]).starts_with("-ERR "));
    let mut keys = redis.query(&["KEYS", "*"]).into_strings();
    keys.sort();
    assert_eq!(keys, ["empty", "foo", "list", "n"]);
    assert_eq!(
        redis.query(&["MGET", "foo", "missing"]),
        Reply::Array(Some(vec![
            Reply::Bulk(Some("bar".into())),
            Reply::Bulk(None)
        ]))
    );
    assert_eq!(redis.query(&["FLUSHALL"]), Reply::Simple("OK".into()));
    assert_eq!(redis.query(&["DBSIZE"]), Reply::Integer(0));
    redis.command(&["SET", "foo", "bar"]);

    // Killed: the port refuses connections.
    let first = redis.pid().unwrap();
    redis.kill();
    assert!(!alive(first));
    assert_eq!(redis.pid(), None);
    let refused = TcpStream::connect(redis.addr()).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    redis.kill(); // a no-op now

    // Restarted on the same port, empty.
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), Some(first));
    assert_eq!(redis.command(&["PING"]), "+PONG\r\n");
    assert_eq!(redis.command(&["GET", "foo"]), "$-1\r\n");

    // Paused: connections are accepted but nothing answers.
    redis.pause();
    let timed_out = redis
        .try_command(&["PING"], Duration::from_millis(300))
        .unwrap_err();
    assert!(
        matches!(
            timed_out.kind(),
            ErrorKind::WouldBlock | ErrorKind::TimedOut
        ),
        "{timed_out:?}"
    );
    redis.resume();
    assert_eq!(redis.command(&["PING"]), "+PONG\r\n");

    // Restarting a running server replaces it.
    let second = redis.pid().unwrap();
    redis.restart();
    assert!(!alive(second));
    assert_eq!(redis.command(&["PING"]), "+PONG\r\n");

    // Dropped: the process is gone and the port is free.
    let last = redis.pid().unwrap();
    let addr = redis.addr();
    drop(redis);
    assert!(!alive(last));
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn a_panicking_test_leaves_no_server_behind() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let pid = redis.pid().unwrap();
    let outcome = thread::spawn(move || {
        redis.pause(); // a paused server is killed too
        panic!("a test failing while its redis-server (pid {pid}) runs");
    })
    .join();
    assert!(outcome.is_err());
    assert!(
        !alive(pid),
        "redis-server {pid} outlived the panicking test"
    );
}

#[test]
#[allow(
    clippy::disallowed_types,
    reason = "measures a real process on the real clock"
)]
fn restart_waits_while_the_port_is_busy() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.kill();
    let squatter = TcpListener::bind(redis.addr()).unwrap();
    let started = std::time::Instant::now();
    let release = thread::spawn(move || {
        thread::sleep(Duration::from_secs(1));
        drop(squatter);
    });
    redis.restart();
    assert!(started.elapsed() >= Duration::from_millis(900));
    release.join().unwrap();
    assert_eq!(redis.command(&["PING"]), "+PONG\r\n");
}

#[test]
fn servers_run_side_by_side() {
    let (Some(a), Some(b)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    assert_ne!(a.port(), b.port());
    a.command(&["SET", "who", "a"]);
    b.command(&["SET", "who", "b"]);
    assert_eq!(a.command(&["GET", "who"]), "$1\r\na\r\n");
    assert_eq!(b.command(&["GET", "who"]), "$1\r\nb\r\n");
}
