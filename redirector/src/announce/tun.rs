//! The TUN device the announced routes go through. The daemon holds its only
//! file descriptor: when the daemon dies the kernel closes it, the device
//! goes, and with it every route through it. Nothing is ever read from or
//! written to it.
use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use crate::netlink;

/// `struct ifreq` as `TUNSETIFF` reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IF_NAMESIZE],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN device.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    /// Its name.
    pub name: String,
    /// Its interface index.
    pub ifindex: u32,
}

impl Tun {
    /// Creates the TUN device `name`, or takes over the persistent one a
    /// stopped daemon left, and makes it non-persistent: it lives as long as
    /// this handle (or until [`Tun::persist`]).
    pub fn open(name: &str) -> io::Result<Tun> {
        let file = File::options().read(true).write(true).open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IF_NAMESIZE],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        let bytes = name.as_bytes();
        if bytes.len() >= libc::IF_NAMESIZE {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
        }
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: TUNSETIFF reads (and writes back) a `struct ifreq`, which
        // `IfReq` lays out (name, flags, padding to its 40 bytes); `req`
        // outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            let why = match e.raw_os_error() {
                Some(libc::EINVAL) => "an interface of that name exists and is not a TUN device",
                Some(libc::EBUSY) => "another process holds that TUN device",
                Some(libc::EPERM) => "creating a TUN device needs CAP_NET_ADMIN",
                _ => "",
            };
            return Err(if why.is_empty() {
                e
            } else {
                io::Error::new(e.kind(), format!("{e}: {why}"))
            });
        }
        let fd = OwnedFd::from(file);
        let tun = Tun {
            ifindex: netlink::ifindex(name).map_err(io::Error::other)?,
            fd,
            name: name.to_owned(),
        };
        tun.persist(false)?;
        Ok(tun)
    }

    /// Makes the device outlive this handle (`true`: a clean stop, whose
    /// successor takes it over with its routes) or not.
    pub fn persist(&self, on: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value; the fd is a TUN
        // device attached by `open`.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(on)) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernels_size() {
        assert_eq!(size_of::<IfReq>(), 40);
    }
}
