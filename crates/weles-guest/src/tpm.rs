//! Talking to the VM's TPM: the kernel's resource manager `/dev/tpmrm0`, or (tests, tools) a
//! Unix socket that speaks raw TPM 2.0 frames, as weles-vtpm's data channel does. The agent opens
//! it only while it uses it.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Most bytes of a TPM response (TPM2's own limit for these commands).
const MAX_RESPONSE: usize = 4096;

pub struct Tpm {
    io: Box<dyn ReadWrite>,
    socket: bool,
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Tpm {
    pub fn open(path: &Path) -> io::Result<Tpm> {
        let socket = std::fs::metadata(path)?.file_type().is_socket();
        let io: Box<dyn ReadWrite> = if socket {
            Box::new(UnixStream::connect(path)?)
        } else {
            Box::new(OpenOptions::new().read(true).write(true).open(path)?)
        };
        Ok(Tpm { io, socket })
    }

    /// Sends one command, returns its response.
    pub fn transmit(&mut self, command: &[u8]) -> io::Result<Vec<u8>> {
        self.io.write_all(command)?;
        if !self.socket {
            // A TPM character device returns a whole response per read.
            let mut buf = vec![0u8; MAX_RESPONSE];
            let n = self.io.read(&mut buf)?;
            buf.truncate(n);
            return Ok(buf);
        }
        let mut head = [0u8; 10];
        self.io.read_exact(&mut head)?;
        let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
        if !(10..=MAX_RESPONSE).contains(&size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TPM response of {size} bytes"),
            ));
        }
        let mut resp = head.to_vec();
        resp.resize(size, 0);
        self.io.read_exact(&mut resp[10..])?;
        Ok(resp)
    }
}
