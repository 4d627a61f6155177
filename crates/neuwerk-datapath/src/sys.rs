//! The `bpf(2)` syscall with an attribute struct, for the map commands
//! aya 0.14 lacks (batches) or that must run on a shared handle (aya's
//! updates take `&mut`). The attribute structs and their layout tests live
//! with their commands.

use std::io;

/// Calls `bpf(cmd, attr, size_of::<A>())`; returns what the kernel returns
/// (a new fd for BPF_MAP_CREATE, 0 otherwise). The kernel may write back
/// into `attr` (a batch's `count`), also on error.
///
/// # Safety
/// `A` must be the kernel's `bpf_attr` member for `cmd` (the kernel
/// zero-fills the rest of the union), and every pointer in `attr` must
/// point at memory of the sizes the map and `cmd` imply, valid for the
/// call.
pub(crate) unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<i64> {
    // SAFETY: as the caller guarantees.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A,
            std::mem::size_of::<A>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
