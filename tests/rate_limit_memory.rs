//! The rate limiter's memory under a flood of distinct clients: bounded while they arrive,
//! and given back once they go idle. Measured with a counting global allocator, so this
//! file holds this one test (other tests' allocations would be counted too).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use tower_gateway::rate_limit::{Check, Decision, LocalStore, Quota, RateLimitStore};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counter only
// observes the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

const MIB: f64 = 1024.0 * 1024.0;

fn client(i: u64) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i)))
}

fn admitted(store: &LocalStore<IpAddr, FakeRelativeClock>, key: IpAddr) -> bool {
    match store.check(Some(&key), true) {
        Check::Ready(Decision::Allow { .. }) => true,
        Check::Ready(_) => false,
        Check::Pending(_) => unreachable!("the local store answers at once"),
    }
}

#[test]
fn a_million_distinct_clients_then_idle_gives_the_memory_back() {
    const CLIENTS: u64 = 1_000_000;
    let clock = FakeRelativeClock::default();
    let quota = Quota::new(100, Duration::from_secs(60)).unwrap();
    let baseline = live();
    let store = LocalStore::with_clock(quota, clock.clone());

    for i in 0..CLIENTS {
        assert!(admitted(&store, client(i)), "client {i} is new: admitted");
    }
    let full = live() - baseline;
    eprintln!(
        "{} keys: {:.1} MiB ({:.0} bytes a key)",
        store.len(),
        full as f64 / MIB,
        full as f64 / CLIENTS as f64
    );
    assert_eq!(
        store.len(),
        1_000_000,
        "every client tracked: none idle yet"
    );
    // The stated bound: at most 128 bytes a key with the default cap of a million keys.
    assert!(full < 128 * 1_000_000, "{full} bytes for a million keys");

    // A second million while the first is still active: the cap holds, the newcomers share
    // the overflow budget, and memory does not grow.
    for i in CLIENTS..2 * CLIENTS {
        let _ = admitted(&store, client(i));
    }
    assert_eq!(store.len(), 1_000_000, "the key count is capped");
    let capped = live() - baseline;
    assert!(
        capped <= full + full / 100,
        "no growth past the cap: {capped} vs {full}"
    );

    // Every client goes idle for a window; the next newcomer's check sweeps them out.
    clock.advance(Duration::from_secs(61));
    let started = tokio::time::Instant::now();
    assert!(admitted(&store, client(3 * CLIENTS)));
    eprintln!(
        "the check that started the sweep of a million idle keys took {:?}",
        started.elapsed()
    );
    // A table this big is swept on a thread of its own, which then gives the memory back.
    while !store.is_empty() || live() - baseline >= 256 * 1024 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the sweep did not finish: {} keys and {} bytes left",
            store.len(),
            live() - baseline
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("sweep done after {:?}", started.elapsed());
    let after = live() - baseline;
    eprintln!(
        "after eviction: {} keys, {:.1} KiB",
        store.len(),
        after as f64 / 1024.0
    );
    assert!(store.is_empty(), "idle keys evicted: {} left", store.len());
    assert!(
        after < 256 * 1024,
        "memory given back after eviction: {after} bytes still held"
    );
}
