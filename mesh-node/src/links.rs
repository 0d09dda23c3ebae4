//! Network interfaces appearing and going: a route netlink socket subscribed to link events
//! in the agent's network namespace, so a new pod's veth gets the inbound capture program as
//! soon as it exists instead of at the next poll. The messages are not parsed: any of them
//! means "look again", and the agent's sync compares what is attached with what exists.

use std::io;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The netlink multicast group of link (interface) changes.
const LINK_GROUP: u32 = libc::RTMGRP_LINK as u32;

/// Link events of the network namespace it was opened in.
pub struct LinkEvents {
    socket: AsyncFd<OwnedFd>,
}

impl LinkEvents {
    /// Subscribes; must run inside a tokio runtime.
    pub fn open() -> io::Result<LinkEvents> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, LINK_GROUP),
        )?;
        #[allow(unsafe_code, reason = "tokio's fd registration is unsafe (I/O safety)")]
        // SAFETY: the `AsyncFd` owns the socket (an `OwnedFd`), so the fd stays open and is
        // not reused for as long as it is registered.
        let socket = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(LinkEvents { socket })
    }

    /// Waits until at least one link changed (or the kernel dropped events because the
    /// socket's buffer was full: the caller looks again either way), then takes every
    /// message waiting.
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            let mut guard = self.socket.readable().await?;
            let mut got = false;
            loop {
                match recv(
                    std::os::fd::AsRawFd::as_raw_fd(guard.get_inner()),
                    &mut buf,
                    MsgFlags::empty(),
                ) {
                    Ok(_) | Err(Errno::ENOBUFS) => got = true,
                    Err(Errno::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(Errno::EINTR) => {}
                    Err(errno) => return Err(errno.into()),
                }
            }
            if got {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests;
