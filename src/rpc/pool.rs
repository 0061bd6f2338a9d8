//! The bounded worker pool that executes JSON-RPC requests for every connection. It owns
//! its threads and the FIFO of jobs waiting for one; it knows nothing of requests.
//!
//! Workers are spawned on demand up to the limit, so an idle daemon holds no worker
//! threads' stacks, and a job that panics costs that job only.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed-capacity pool: at most `max` jobs run at once; the rest wait in arrival order.
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    max: usize,
}

struct State {
    jobs: VecDeque<Job>,
    idle: usize,
    total: usize,
}

impl Pool {
    pub fn new(max: usize) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(State { jobs: VecDeque::new(), idle: 0, total: 0 }),
                ready: Condvar::new(),
                max: max.max(1),
            }),
        }
    }

    /// Queues `job`; it runs as soon as a worker is free.
    pub fn submit(&self, job: Job) {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.jobs.push_back(job);
        // Idle workers that were woken but have not yet taken a job still count as idle,
        // so compare the queue with them: a job that no idle worker will take gets a new
        // worker while the pool is below its limit.
        if state.jobs.len() > state.idle && state.total < self.shared.max {
            let shared = Arc::clone(&self.shared);
            let spawned =
                std::thread::Builder::new().name("worker".into()).spawn(move || work(&shared));
            match spawned {
                Ok(_) => state.total += 1,
                Err(e) => log::warn!("cannot start a worker thread: {e}"),
            }
        }
        drop(state);
        self.shared.ready.notify_one();
    }
}

fn work(shared: &Shared) {
    loop {
        let job = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(job) = state.jobs.pop_front() {
                    break job;
                }
                state.idle += 1;
                state = shared.ready.wait(state).unwrap_or_else(PoisonError::into_inner);
                state.idle -= 1;
            }
        };
        // Jobs answer their own panics; this catch only keeps the worker alive.
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            log::error!("a pool job panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_blocked_job_does_not_hold_back_the_next_one() {
        let pool = Pool::new(4);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        pool.submit(Box::new(move || {
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
        }));
        let tx = done_tx.clone();
        pool.submit(Box::new(move || tx.send(2).expect("receiver alive")));
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(2));
        release_tx.send(()).expect("first job waiting");
    }

    #[test]
    fn jobs_beyond_the_limit_wait_in_order_and_panics_do_not_shrink_the_pool() {
        let pool = Pool::new(1);
        let (tx, rx) = mpsc::channel();
        pool.submit(Box::new(|| panic!("boom")));
        for i in 0..5 {
            let tx = tx.clone();
            pool.submit(Box::new(move || tx.send(i).expect("receiver alive")));
        }
        let got: Vec<i32> =
            (0..5).map(|_| rx.recv_timeout(Duration::from_secs(5)).expect("job ran")).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }
}
