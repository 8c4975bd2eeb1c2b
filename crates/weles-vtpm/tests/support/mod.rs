//! Helpers shared by the integration tests that start weles-vtpm (or swtpm) on loopback ports.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};

/// Two adjacent free ports: tpm2-tools' swtpm TCTI expects the control channel at data + 1.
///
/// Taken from a process-wide counter below the kernel's ephemeral range (32768 and up): ports
/// found by binding port 0 and letting go could be handed out again to a test running in
/// parallel before its TPM binds them, and then one TPM serves both tests. Here no two tests of
/// this binary get the same port, and bind(0) never gives these out; a port some other program
/// holds is skipped.
pub fn free_ports() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 3_000) as u16 * 2;
    loop {
        let p = base + NEXT.fetch_add(2, Ordering::Relaxed) % 6_000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        {
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
