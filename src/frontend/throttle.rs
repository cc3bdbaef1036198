//! Slowing down password guessing: failed logins are counted per client address over a minute,
//! and past a threshold every further attempt from that address, right or wrong, waits before
//! its exchange starts, 1 s more per failure up to 10 s. Delaying only the failures would let a
//! guesser read the answer from how long it takes. The delay holds only that connection; other
//! clients are not slowed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
const MAX_DELAY: Duration = Duration::from_secs(10);

pub struct FailedLogins {
    free: u32,
    by_addr: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailedLogins {
    /// `free`: failures per address and minute that are answered at once.
    pub fn new(free: u32) -> Self {
        Self { free, by_addr: Mutex::new(HashMap::new()) }
    }

    /// How long a login attempt from `addr` waits before its exchange.
    pub fn delay(&self, addr: IpAddr, now: Instant) -> Duration {
        let map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&addr) {
            Some((since, n)) if now.duration_since(*since) < WINDOW => {
                (Duration::from_secs(1) * n.saturating_sub(self.free)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    /// Records a failed login from `addr`; returns the delay its next attempt will get.
    pub fn failed(&self, addr: IpAddr, now: Instant) -> Duration {
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
        }
        let entry = map.entry(addr).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        let over = entry.1.saturating_sub(self.free);
        (Duration::from_secs(1) * over).min(MAX_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_past_the_threshold_are_delayed_more_and_more_then_forgotten() {
        let f = FailedLogins::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        assert_eq!(f.failed(a, t), Duration::ZERO);
        assert_eq!(f.failed(a, t), Duration::ZERO);
        assert_eq!(f.failed(a, t), Duration::from_secs(1));
        assert_eq!(f.failed(a, t), Duration::from_secs(2));
        assert_eq!(f.failed(b, t), Duration::ZERO, "per address");
        for _ in 0..20 {
            f.failed(a, t);
        }
        assert_eq!(f.failed(a, t), MAX_DELAY);
        assert_eq!(f.delay(a, t), MAX_DELAY, "the next attempt waits, whatever its password");
        assert_eq!(f.delay(b, t), Duration::ZERO);
        assert_eq!(f.delay(a, t + WINDOW), Duration::ZERO, "a new minute starts afresh");
        assert_eq!(f.failed(a, t + WINDOW), Duration::ZERO);
    }
}
