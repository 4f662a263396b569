//! Shared mappings of `BPF_F_MMAPABLE` arrays (the flow tables, `SEEN`).
use std::{
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    ptr::NonNull,
};

/// Maps `bytes` of the array `fd` read-write and shared, rounded up to whole
/// pages; the mapping's start and length (for `munmap`).
pub(super) fn map_shared<T>(fd: &OwnedFd, bytes: usize) -> std::io::Result<(NonNull<T>, usize)> {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let len = bytes.div_ceil(page).max(1) * page;
    // SAFETY: a fresh shared mapping of an mmapable BPF array; the kernel
    // checks the length against the map.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_fd().as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base = NonNull::new(ptr.cast::<T>()).ok_or_else(std::io::Error::last_os_error)?;
    Ok((base, len))
}
