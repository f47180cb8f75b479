//! Socket options socket2 does not offer.

use std::io;
use std::os::fd::AsRawFd;

/// Turns on an IPv4 (`SOL_IP`) socket option that takes an int: IP_BIND_ADDRESS_NO_PORT,
/// IP_RECVORIGDSTADDR.
pub fn enable_ip_option(socket: &impl AsRawFd, option: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, and a pointer to an int of the length given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IP,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_an_option_and_reports_failures() {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        enable_ip_option(&socket, libc::IP_RECVORIGDSTADDR).unwrap();
        let err = enable_ip_option(&socket, -1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOPROTOOPT));
    }
}
