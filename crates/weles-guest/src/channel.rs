//! The guest end of the guest channel: a virtio-serial port device or a Unix socket.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A connected channel; `try_clone` gives the reading half its own handle.
pub enum Channel {
    Device(File),
    Socket(UnixStream),
}

impl Channel {
    /// Opens `path`: a Unix socket is connected, anything else (the virtio-serial port's
    /// character device) opened for reading and writing.
    pub fn connect(path: &Path) -> io::Result<Channel> {
        let kind = std::fs::metadata(path)?.file_type();
        if kind.is_socket() {
            UnixStream::connect(path).map(Channel::Socket)
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map(Channel::Device)
        }
    }

    pub fn try_clone(&self) -> io::Result<Channel> {
        Ok(match self {
            Channel::Device(f) => Channel::Device(f.try_clone()?),
            Channel::Socket(s) => Channel::Socket(s.try_clone()?),
        })
    }

    /// Ends the connection in both directions (a socket); a device is simply dropped.
    pub fn shutdown(&self) {
        if let Channel::Socket(s) = self {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Channel::Device(f) => f.read(buf),
            Channel::Socket(s) => s.read(buf),
        }
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Channel::Device(f) => f.write(buf),
            Channel::Socket(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Channel::Device(f) => f.flush(),
            Channel::Socket(s) => s.flush(),
        }
    }
}
