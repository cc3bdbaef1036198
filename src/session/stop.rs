//! Telling every session of a node to stop: first at its next quiet point (drain), then at once
//! (abort).
//!
//! A session looks at this on every wake-up, so looking must be cheap: one atomic load, plus a
//! lock only when the task's waker changes (with a current-thread runtime, never after the
//! first look). A `CancellationToken` future costs two uncontended mutex acquisitions per poll,
//! measured at about 9% of pgmix's user-space CPU in pgbench select-only.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::SeqCst};
use std::task::{Context, Waker};

/// How far the node has got in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Running = 0,
    Drain = 1,
    Abort = 2,
}

impl Level {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Level::Running,
            1 => Level::Drain,
            _ => Level::Abort,
        }
    }
}

/// The node's side: raise the level, and every watching session is woken.
#[derive(Default)]
pub struct StopSignal {
    level: AtomicU8,
    wakers: Mutex<HashMap<u64, Waker>>,
    next_id: AtomicU64,
}

impl StopSignal {
    /// Raises the level (never lowers it) and, if it rose, wakes every session watching.
    pub fn raise(&self, to: Level) {
        if self.level.fetch_max(to as u8, SeqCst) >= to as u8 {
            return;
        }
        if let Ok(w) = self.wakers.lock() {
            w.values().for_each(Waker::wake_by_ref);
        }
    }

    pub fn watch(self: &Arc<Self>) -> StopWatch {
        StopWatch { signal: self.clone(), id: self.next_id.fetch_add(1, SeqCst), waker: None }
    }
}

/// A session's side.
pub struct StopWatch {
    signal: Arc<StopSignal>,
    id: u64,
    waker: Option<Waker>,
}

impl StopWatch {
    /// The current level; the task in `cx` is woken when it rises. The waker is registered before
    /// the level is read, so a raise between the two is seen either here or by the wake-up.
    pub fn poll_level(&mut self, cx: &mut Context<'_>) -> Level {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let w = cx.waker().clone();
            if let Ok(mut all) = self.signal.wakers.lock() {
                all.insert(self.id, w.clone());
            }
            self.waker = Some(w);
        }
        Level::from_u8(self.signal.level.load(SeqCst))
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        if let Ok(mut all) = self.signal.wakers.lock() {
            all.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn raising_wakes_every_watcher_and_never_lowers() {
        let signal = Arc::new(StopSignal::default());
        let counts: Vec<Arc<Count>> = (0..3).map(|_| Arc::new(Count(AtomicUsize::new(0)))).collect();
        let mut watches: Vec<StopWatch> = counts.iter().map(|_| signal.watch()).collect();
        for (w, c) in watches.iter_mut().zip(&counts) {
            let waker = Waker::from(c.clone());
            assert_eq!(w.poll_level(&mut Context::from_waker(&waker)), Level::Running);
        }
        signal.raise(Level::Drain);
        assert!(counts.iter().all(|c| c.0.load(SeqCst) == 1));
        // A session that has ended is not woken any more.
        drop(watches.pop());
        signal.raise(Level::Abort);
        signal.raise(Level::Drain);
        let counts: Vec<usize> = counts.iter().map(|c| c.0.load(SeqCst)).collect();
        assert_eq!(counts, [2, 2, 1]);
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        assert_eq!(watches[0].poll_level(&mut Context::from_waker(&waker)), Level::Abort);
    }

    /// A raise at the worst moment, without relying on thread timing: while `poll_level` is
    /// registering the task's waker (the test waker raises the signal when it is first cloned).
    /// The poll must then return the new level, or the raise must have woken the task.
    #[test]
    fn a_raise_while_the_waker_is_being_registered_is_seen_or_wakes() {
        use std::sync::atomic::AtomicBool;
        use std::task::{RawWaker, RawWakerVTable};
        use std::time::Duration;

        struct Hook {
            signal: Arc<StopSignal>,
            armed: AtomicBool,
            woken: AtomicUsize,
        }
        fn raw(hook: Arc<Hook>) -> RawWaker {
            RawWaker::new(Arc::into_raw(hook).cast(), &VTABLE)
        }
        static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_waker);
        // SAFETY (all four): `p` comes from `raw`, and the waker it belongs to holds one count.
        unsafe fn clone(p: *const ()) -> RawWaker {
            let hook = unsafe {
                Arc::increment_strong_count(p.cast::<Hook>());
                Arc::from_raw(p.cast::<Hook>())
            };
            if hook.armed.swap(false, SeqCst) {
                hook.signal.raise(Level::Drain);
            }
            raw(hook)
        }
        unsafe fn wake(p: *const ()) {
            unsafe {
                wake_by_ref(p);
                drop_waker(p);
            }
        }
        unsafe fn wake_by_ref(p: *const ()) {
            unsafe { &*p.cast::<Hook>() }.woken.fetch_add(1, SeqCst);
        }
        unsafe fn drop_waker(p: *const ()) {
            drop(unsafe { Arc::from_raw(p.cast::<Hook>()) });
        }

        let signal = Arc::new(StopSignal::default());
        let hook = Arc::new(Hook { signal: signal.clone(), armed: AtomicBool::new(true), woken: AtomicUsize::new(0) });
        // SAFETY: the vtable above keeps the Arc's count.
        let waker = unsafe { Waker::from_raw(raw(hook.clone())) };
        let mut watch = signal.watch();
        // On a thread of its own: a raise that deadlocked inside `poll_level` fails the test
        // instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let level = watch.poll_level(&mut Context::from_waker(&waker));
            drop(watch);
            let _ = tx.send(level);
        });
        let level = rx.recv_timeout(Duration::from_secs(10)).expect("poll_level returns");
        assert!(!hook.armed.load(SeqCst), "the raise happened while the waker was registered");
        assert!(
            level == Level::Drain || hook.woken.load(SeqCst) > 0,
            "the raise was neither seen by the poll nor woke the task: a lost wake-up"
        );
    }

    /// The race `Session::pump` depends on: the node raises the level from another thread while
    /// a session's task is in `poll_level`, or just after that poll registered and returned
    /// Pending. Either the poll sees the new level or the raise wakes the task; a lost wake-up
    /// would leave the session running through a shutdown. Many tries on a multi-thread runtime;
    /// each waits with a timeout, so a lost wake-up fails instead of hanging.
    #[test]
    fn a_raise_racing_with_a_waiters_poll_always_wakes_it() {
        use std::sync::atomic::AtomicU8;
        use std::task::Poll;
        use std::time::Duration;

        const TRIES: usize = 20_000;
        /// How far the waiter's first poll has got.
        const POLL_BEGAN: u8 = 1;
        const POLL_RETURNED: u8 = 2;

        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
        // The raiser: its own OS thread, spinning until the waiter's first poll reaches a stage,
        // then raising after a few more spins (a different number each try, so that over the
        // tries the raise lands all over the poll).
        let (jobs, for_raiser) = std::sync::mpsc::channel::<(Arc<StopSignal>, Arc<AtomicU8>, u8, usize)>();
        let raiser = std::thread::spawn(move || {
            for (signal, stage, when, spins) in for_raiser {
                while stage.load(SeqCst) < when {
                    std::hint::spin_loop();
                }
                (0..spins).for_each(|_| std::hint::spin_loop());
                signal.raise(Level::Drain);
            }
        });
        rt.block_on(async {
            for i in 0..TRIES {
                let signal = Arc::new(StopSignal::default());
                let stage = Arc::new(AtomicU8::new(0));
                // Odd tries raise during the first poll, even ones once it has returned Pending.
                let when = if i % 2 == 1 { POLL_BEGAN } else { POLL_RETURNED };
                jobs.send((signal.clone(), stage.clone(), when, (i / 2) % 64)).unwrap();
                let mut watch = signal.watch();
                let mut polls = 0;
                let waiter = tokio::spawn(std::future::poll_fn(move |cx| {
                    polls += 1;
                    stage.fetch_max(POLL_BEGAN, SeqCst);
                    let level = watch.poll_level(cx);
                    if level >= Level::Drain {
                        return Poll::Ready((level, polls));
                    }
                    stage.fetch_max(POLL_RETURNED, SeqCst);
                    Poll::Pending
                }));
                let (level, polls) = tokio::time::timeout(Duration::from_secs(10), waiter)
                    .await
                    .unwrap_or_else(|_| panic!("try {i}: the raise did not wake the waiter (a lost wake-up)"))
                    .unwrap();
                assert_eq!(level, Level::Drain);
                if when == POLL_RETURNED {
                    // The first poll saw Running, so only the wake-up can have brought it back.
                    assert!(polls >= 2, "try {i}: polled {polls} times");
                }
            }
        });
        drop(jobs);
        raiser.join().unwrap();
    }
}
