//! `fs/watchMissing` and its `fs/missingChanged` notification (PROTOCOL v2), as the 0.171
//! server behaves: a session has at most one watch; a request with a higher `watchId`
//! replaces it (even when it then answers `watching: false`) and one with a lower or equal
//! id is stale. The watch fires once, when a `missing` path or a missing ancestor of one
//! appears (each is watched in its nearest existing directory, not recursively), or when
//! the optional `present` path itself changes (written, touched, chmod-ed, removed; not
//! when something is created inside a `present` directory); the client then re-evaluates
//! and registers anew.
//!
//! `Watches` is one session's watch: it owns an inotify instance and one watcher thread,
//! both created on the first watch and ended when the session drops it or calls `stop`.
//! Notifications leave through the callback the session supplies; this module never
//! touches sockets.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::RpcError;
use crate::uri::AbsolutePath;

/// Events that make a missing child appear in a watched directory.
const APPEAR: u32 = libc::IN_CREATE | libc::IN_MOVED_TO;
/// Events that change the `present` path itself.
const CHANGE: u32 = libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;
/// Directories one watch may put under inotify (one per distinct nearest existing ancestor of
/// a missing path, plus `present`). Upstream has no limit; past this a request answers
/// `watching: false` instead of using up the user's inotify watches.
pub const MAX_WATCHED_DIRECTORIES: usize = 256;
/// Room for many events per read (each is 16 bytes plus its name).
const EVENT_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchMissingParams {
    pub watch_id: u64,
    pub missing: Vec<AbsolutePath>,
    #[serde(default)]
    pub present: Option<AbsolutePath>,
    // A `sandbox` member is accepted and ignored, as upstream: watching reveals no content.
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct WatchMissingResponse {
    pub watching: bool,
}

/// Something a notification's text is handed to (the session's link to its connection).
pub type Notify = Arc<dyn Fn(String) + Send + Sync>;

/// One session's watch and the thread that serves it.
pub struct Watches {
    shared: Arc<Shared>,
    watcher: Mutex<Option<Watcher>>,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Default)]
struct State {
    /// The highest `watchId` seen; requests at or below it are stale.
    latest: Option<u64>,
    active: Option<Active>,
}

struct Active {
    id: u64,
    /// Watched directories and, in each, the names that lead to a missing path.
    appear: HashMap<i32, HashSet<OsString>>,
    /// The watch on `present` itself.
    present: Option<i32>,
}

impl Active {
    fn descriptors(&self) -> impl Iterator<Item = i32> + '_ {
        self.appear.keys().copied().chain(self.present)
    }
}

struct Watcher {
    inotify: Arc<OwnedFd>,
    /// An eventfd that tells the thread to end.
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Watches {
    pub fn new(notify: Notify) -> Watches {
        Watches {
            shared: Arc::new(Shared { state: Mutex::new(State::default()), notify }),
            watcher: Mutex::new(None),
        }
    }

    /// Ends the watch and the watcher thread (the session ended).
    pub fn stop(&self) {
        let watcher = lock(&self.watcher).take();
        if let Some(mut watcher) = watcher {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
            unsafe { libc::write(watcher.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
            if let Some(thread) = watcher.thread.take() {
                let _ = thread.join();
            }
        }
        lock(&self.shared.state).active = None;
    }

    /// True while a watcher thread is running (tests).
    #[cfg(test)]
    pub fn has_thread(&self) -> bool {
        lock(&self.watcher).is_some()
    }

    /// The inotify instance, starting the watcher thread on first use.
    fn inotify(&self) -> io::Result<Arc<OwnedFd>> {
        let mut watcher = lock(&self.watcher);
        if let Some(w) = watcher.as_ref() {
            return Ok(Arc::clone(&w.inotify));
        }
        // SAFETY: plain syscalls; each returned fd is owned right away.
        let inotify = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if inotify < 0 {
            return Err(io::Error::last_os_error());
        }
        let inotify = Arc::new(unsafe { OwnedFd::from_raw_fd(inotify) });
        // SAFETY: as above.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
        let (fd, stop, shared) =
            (Arc::clone(&inotify), Arc::clone(&wake), Arc::clone(&self.shared));
        let thread = std::thread::Builder::new()
            .name("fs-watch".into())
            .spawn(move || serve(&fd, &stop, &shared))?;
        *watcher = Some(Watcher { inotify: Arc::clone(&inotify), wake, thread: Some(thread) });
        Ok(inotify)
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn watch_missing(
    p: WatchMissingParams,
    watches: &Watches,
) -> Result<WatchMissingResponse, RpcError> {
    let not_watching = Ok(WatchMissingResponse { watching: false });
    let inotify = watches.inotify().ok();
    let mut state = lock(&watches.shared.state);
    if state.latest.is_some_and(|latest| p.watch_id <= latest) {
        return not_watching;
    }
    state.latest = Some(p.watch_id);
    // A newer request replaces the watch, whatever becomes of it.
    if let (Some(old), Some(fd)) = (state.active.take(), inotify.as_ref()) {
        remove(fd, &old);
    }
    let Some(fd) = inotify else {
        return not_watching;
    };
    let missing: Option<Vec<&Path>> = p.missing.iter().map(AbsolutePath::local).collect();
    let Some(missing) = missing.filter(|m| !m.is_empty()) else {
        return not_watching;
    };
    let present = match &p.present {
        None => None,
        Some(present) => match present.local() {
            Some(path) => Some(path),
            None => return not_watching,
        },
    };
    let mut active = Active { id: p.watch_id, appear: HashMap::new(), present: None };
    if let Some(present) = present {
        match add_watch(&fd, present, CHANGE) {
            Some(wd) => active.present = Some(wd),
            None => return not_watching,
        }
    }
    for path in &missing {
        let Some((dir, name)) = nearest_existing(path) else {
            continue;
        };
        // IN_MASK_ADD: the directory may already be watched (as `present`, or for another
        // missing path); the events add up on the one descriptor.
        let added = add_watch(&fd, dir, APPEAR | libc::IN_MASK_ADD);
        let room = |wd: &i32| {
            active.appear.contains_key(wd) || active.appear.len() < MAX_WATCHED_DIRECTORIES
        };
        match added.filter(room) {
            Some(wd) => {
                active.appear.entry(wd).or_default().insert(name);
            }
            None => {
                if let Some(wd) = added {
                    // SAFETY: removing our own watch descriptor.
                    unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) };
                }
                remove(&fd, &active);
                return not_watching;
            }
        }
    }
    // Checked after the watches are in place, so a path created meanwhile is not missed.
    if missing.iter().any(|m| std::fs::symlink_metadata(m).is_ok()) {
        remove(&fd, &active);
        return not_watching;
    }
    state.active = Some(active);
    Ok(WatchMissingResponse { watching: true })
}

fn add_watch(fd: &OwnedFd, path: &Path, mask: u32) -> Option<i32> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a valid NUL-terminated path and our own inotify fd.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
    (wd >= 0).then_some(wd)
}

fn remove(fd: &OwnedFd, active: &Active) {
    for wd in active.descriptors() {
        // SAFETY: removing a watch descriptor from our own inotify instance.
        unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) };
    }
}

/// The nearest existing directory above `path` and the name in it on the way to `path`.
fn nearest_existing(path: &Path) -> Option<(&Path, OsString)> {
    let mut child = path;
    while let Some(parent) = child.parent() {
        if parent.is_dir() {
            return Some((parent, next_component(parent, path)?));
        }
        child = parent;
    }
    None
}

/// The name of the child of `dir` on the way to `path`, if `path` lies under `dir`.
fn next_component(dir: &Path, path: &Path) -> Option<OsString> {
    match path.strip_prefix(dir).ok()?.components().next()? {
        Component::Normal(name) => Some(name.to_os_string()),
        _ => None,
    }
}

/// The watcher thread: waits for inotify events or the stop signal.
fn serve(inotify: &OwnedFd, wake: &OwnedFd, shared: &Shared) {
    let mut buf = vec![0u8; EVENT_BUFFER_BYTES];
    loop {
        let mut fds = [
            libc::pollfd { fd: inotify.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfds; no timeout because `stop` always signals.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        // SAFETY: reads into our own buffer of the given length.
        let n = unsafe { libc::read(inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let fired = matched(&buf[..n as usize], shared, inotify);
        if let Some(id) = fired {
            (shared.notify)(format!(
                r#"{{"method":"fs/missingChanged","params":{{"watchId":{id}}}}}"#
            ));
        }
    }
}

/// Looks through one read's events for the active watch; on a match the watch is removed
/// (it fires once) and its id returned.
fn matched(events: &[u8], shared: &Shared, inotify: &OwnedFd) -> Option<u64> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut state = lock(&shared.state);
    let mut at = 0;
    while at + HEADER <= events.len() {
        // SAFETY: the kernel wrote a whole inotify_event header here; read unaligned.
        let event: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(events[at..].as_ptr().cast()) };
        let name_end = (at + HEADER + event.len as usize).min(events.len());
        let raw = &events[at + HEADER..name_end];
        let name = OsStr::from_bytes(&raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())]);
        at = name_end;
        let active = state.active.as_ref()?;
        let appeared = event.mask & APPEAR != 0
            && active.appear.get(&event.wd).is_some_and(|names| names.contains(name));
        // Only events about `present` itself (no name): not about what a directory holds.
        let changed =
            event.mask & CHANGE != 0 && event.len == 0 && active.present == Some(event.wd);
        if appeared || changed {
            let active = state.active.take()?;
            remove(inotify, &active);
            return Some(active.id);
        }
    }
    None
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn setup(tag: &str) -> (PathBuf, Watches, mpsc::Receiver<String>) {
        let d =
            std::env::temp_dir().join(format!("exec-server-watch-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let watches = Watches::new(Arc::new(move |m| {
            let _ = lock(&tx).send(m);
        }));
        (d, watches, rx)
    }

    fn watch(w: &Watches, id: u64, missing: &[PathBuf], present: &Path) -> bool {
        let p = WatchMissingParams {
            watch_id: id,
            missing: missing.iter().map(|m| AbsolutePath::from_path(m.clone())).collect(),
            present: Some(AbsolutePath::from_path(present)),
        };
        watch_missing(p, w).unwrap().watching
    }

    fn fired(id: u64) -> String {
        format!(r#"{{"method":"fs/missingChanged","params":{{"watchId":{id}}}}}"#)
    }

    #[test]
    fn fires_once_for_the_next_component_of_a_missing_path() {
        let (d, w, rx) = setup("fire");
        assert!(watch(&w, 1, &[d.join("x/y")], &d));
        // An unrelated child does not fire.
        std::fs::write(d.join("other"), b"").unwrap();
        std::fs::create_dir(d.join("x")).unwrap();
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), fired(1));
        std::fs::create_dir(d.join("x/y")).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "fires once");
        w.stop();
        assert!(!w.has_thread());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn newer_ids_replace_stale_ids_are_refused() {
        let (d, w, rx) = setup("replace");
        assert!(watch(&w, 10, &[d.join("a")], &d));
        assert!(watch(&w, 11, &[d.join("b")], &d));
        assert!(!watch(&w, 11, &[d.join("c")], &d));
        assert!(!watch(&w, 9, &[d.join("c")], &d));
        std::fs::write(d.join("a"), b"").unwrap();
        std::fs::write(d.join("b"), b"").unwrap();
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), fired(11));
        // Already present, nothing missing, or no present directory: not watching.
        assert!(!watch(&w, 12, &[d.join("a"), d.join("k")], &d));
        assert!(!watch(&w, 13, &[], &d));
        assert!(!watch(&w, 14, &[d.join("k")], &d.join("nope")));
        // A missing path outside `present` is accepted and never fires.
        assert!(watch(&w, 15, &[PathBuf::from("/nonexistent/exec-server/k")], &d));
        let foreign = WatchMissingParams {
            watch_id: 16,
            missing: vec![AbsolutePath::parse("file://other/x").unwrap()],
            present: Some(AbsolutePath::from_path(&d)),
        };
        assert!(!watch_missing(foreign, &w).unwrap().watching);
        drop(w);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn present_changes_fire_and_present_is_optional() {
        let (d, w, rx) = setup("present");
        std::fs::write(d.join("AGENTS.md"), b"v1").unwrap();
        assert!(watch(&w, 1, &[d.join("p/q/r")], &d.join("AGENTS.md")));
        std::fs::write(d.join("AGENTS.md"), b"v2").unwrap();
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), fired(1));
        let p = WatchMissingParams {
            watch_id: 2,
            missing: vec![AbsolutePath::from_path(d.join("p/q/r"))],
            present: None,
        };
        assert!(watch_missing(p, &w).unwrap().watching);
        std::fs::create_dir(d.join("p")).unwrap();
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), fired(2));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_number_of_watched_directories_is_bounded() {
        let (d, w, _rx) = setup("bound");
        let many: Vec<PathBuf> = (0..=MAX_WATCHED_DIRECTORIES)
            .map(|i| {
                std::fs::create_dir(d.join(format!("d{i}"))).unwrap();
                d.join(format!("d{i}/missing"))
            })
            .collect();
        assert!(!watch(&w, 1, &many, &d));
        assert!(watch(&w, 2, &many[..MAX_WATCHED_DIRECTORIES], &d));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn renames_into_the_directory_fire() {
        let (d, w, rx) = setup("rename");
        std::fs::write(d.join("tmp"), b"").unwrap();
        assert!(watch(&w, 1, &[d.join("final")], &d));
        std::fs::rename(d.join("tmp"), d.join("final")).unwrap();
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), fired(1));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
