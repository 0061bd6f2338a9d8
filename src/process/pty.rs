//! Pseudo-terminal pairs for `tty: true` processes (PROTOCOL.md §4.1.2), with libc only:
//! open the master, unlock it, open the slave, set 24×80 and echo. It owns nothing after
//! returning the two descriptors; making the slave the controlling terminal happens in the
//! child (spawn.rs).

use std::ffi::c_char;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Window size every PTY starts with (§10).
pub const ROWS: u16 = 24;
pub const COLS: u16 = 80;

/// Both ends of a fresh PTY, close-on-exec, neither the server's controlling terminal.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn open() -> io::Result<Pty> {
    // SAFETY: plain libc calls on descriptors this function owns; every returned descriptor
    // is wrapped in an OwnedFd at once so an early return closes it.
    unsafe {
        let master = check(libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC))?;
        let master = OwnedFd::from_raw_fd(master);
        check(libc::grantpt(master.as_raw_fd()))?;
        check(libc::unlockpt(master.as_raw_fd()))?;
        let mut name = [0 as c_char; 128];
        let err = libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len());
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
        let slave =
            check(libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC))?;
        let slave = OwnedFd::from_raw_fd(slave);
        let size = libc::winsize { ws_row: ROWS, ws_col: COLS, ws_xpixel: 0, ws_ypixel: 0 };
        check(libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &size))?;
        // A fresh pty has echo on in practice; set it explicitly because the contract requires it.
        let mut termios: libc::termios = std::mem::zeroed();
        check(libc::tcgetattr(slave.as_raw_fd(), &mut termios))?;
        termios.c_lflag |= libc::ECHO;
        check(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &termios))?;
        Ok(Pty { master, slave })
    }
}
