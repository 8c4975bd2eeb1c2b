//! Helpers shared by the integration tests that start weles-vtpm (or swtpm) on loopback ports.

use std::net::{TcpListener, TcpStream};

/// Two adjacent free ports: tpm2-tools' swtpm TCTI expects the control channel at data + 1.
pub fn free_ports() -> (u16, u16) {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return (p, p + 1);
        }
    }
}

/// Whether something listens on `port`. A connect to a free loopback port can connect the socket
/// to itself (TCP simultaneous open) when the kernel picks that same port as its source; that is
/// not a listener, and holding it would even keep the vTPM from binding.
pub fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port))
        .is_ok_and(|s| s.local_addr().map(|a| a.port()).ok() != Some(port))
}
