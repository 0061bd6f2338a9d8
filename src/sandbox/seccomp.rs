//! The network filter: a seccomp-BPF program, built once, that refuses (EPERM) creating
//! sockets of any family but `AF_UNIX` and the socket calls upstream's Linux sandbox
//! refuses when network is restricted (connect, bind, listen, accept, send/recv of many
//! messages, socket options, ptrace, io_uring). Installing it is one raw syscall, safe
//! between clone and exec. Knows nothing of policies or files.

use std::sync::OnceLock;

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// The low 32 bits of the first argument (little-endian).
const OFFSET_ARG0_LOW: u32 = 16;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

/// Refused unconditionally (upstream's list; `recvfrom` stays allowed as there).
const DENIED: &[libc::c_long] = &[
    libc::SYS_connect,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_getpeername,
    libc::SYS_getsockname,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_ptrace,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter program, built on first use and kept for the life of the process, so the
/// child between clone and exec only passes a pointer to it.
pub fn program() -> &'static [libc::sock_filter] {
    static PROGRAM: OnceLock<Vec<libc::sock_filter>> = OnceLock::new();
    PROGRAM.get_or_init(build)
}

fn build() -> Vec<libc::sock_filter> {
    let errno = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        // A foreign ABI (i386 via int 0x80) would renumber every call: kill.
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // x32 calls carry bit 30 and would bypass the numbers below.
        p.push(jump(BPF_JGE_K, 0x4000_0000, 0, 1));
        p.push(stmt(BPF_RET_K, errno));
    }
    // socket and socketpair: allowed only for AF_UNIX.
    p.push(jump(BPF_JEQ_K, libc::SYS_socket as u32, 1, 0));
    p.push(jump(BPF_JEQ_K, libc::SYS_socketpair as u32, 0, 4));
    p.push(stmt(BPF_LD_W_ABS, OFFSET_ARG0_LOW));
    p.push(jump(BPF_JEQ_K, libc::AF_UNIX as u32, 0, 1));
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    p.push(stmt(BPF_RET_K, errno));
    for &nr in DENIED {
        p.push(jump(BPF_JEQ_K, nr as u32, 0, 1));
        p.push(stmt(BPF_RET_K, errno));
    }
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    p
}

/// Installs `program` on the calling thread: one raw syscall, no allocation. Returns 0 or
/// an errno. The caller must have set `PR_SET_NO_NEW_PRIVS`.
pub fn install(program: &[libc::sock_filter]) -> libc::c_int {
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut _ };
    // SAFETY: `prog` points at a filter that outlives the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0u32, &prog as *const _)
    };
    if ret == 0 {
        0
    } else {
        super::landlock::errno()
    }
}

/// Whether this kernel offers seccomp filters returning errors.
pub fn available() -> bool {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_uint = 2;
    let action: u32 = SECCOMP_RET_ERRNO;
    // SAFETY: queries one action code; no state changes.
    let ret = unsafe {
        libc::syscall(libc::SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0u32, &action as *const u32)
    };
    ret == 0
}
