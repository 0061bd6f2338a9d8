//! The shutdown signal: SIGTERM/SIGINT (or the end of stdin) set a flag and wake every
//! thread that waits on it through a self-pipe that `poll(2)` can watch. It owns the
//! signal handlers and nothing else.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static PIPE_READ: AtomicI32 = AtomicI32::new(-1);
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

/// Installs the SIGTERM/SIGINT handlers. Call once, before any thread starts.
pub fn install() -> io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    PIPE_READ.store(fds[0], Ordering::SeqCst);
    PIPE_WRITE.store(fds[1], Ordering::SeqCst);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only touches atomics and write(2), both async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

extern "C" fn on_signal(_: libc::c_int) {
    trigger();
}

/// Requests shutdown (also used when stdin ends). Async-signal-safe.
pub fn trigger() {
    REQUESTED.store(true, Ordering::SeqCst);
    let fd = PIPE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: writing one byte from a static buffer to our own pipe; a full pipe is
        // fine, since one byte already there wakes every poller.
        unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
    }
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The descriptor that becomes readable once shutdown is requested.
pub fn fd() -> RawFd {
    PIPE_READ.load(Ordering::SeqCst)
}

/// Waits up to `timeout` (forever with `None`); true when shutdown was requested.
pub fn wait(timeout: Option<Duration>) -> bool {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        if requested() {
            return true;
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        if remaining == Some(Duration::ZERO) {
            return false;
        }
        let mut pfd = libc::pollfd { fd: fd(), events: libc::POLLIN, revents: 0 };
        let ms = remaining.map_or(-1, |r| r.as_millis().clamp(1, i32::MAX as u128) as i32);
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}
