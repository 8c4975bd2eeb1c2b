//! Process-wide log sink: stderr, or the file of `--log file=PATH`.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

static SINK: OnceLock<Mutex<Box<dyn Write + Send>>> = OnceLock::new();

/// Directs the log to `file` (appending), or leaves it on stderr.
pub fn init(file: Option<&std::path::Path>) -> std::io::Result<()> {
    let sink: Box<dyn Write + Send> = match file {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let _ = SINK.set(Mutex::new(sink));
    Ok(())
}

/// Writes one line.
pub fn line(msg: &str) {
    match SINK.get() {
        Some(m) => {
            if let Ok(mut w) = m.lock() {
                let _ = writeln!(w, "weles-vtpm: {msg}");
                let _ = w.flush();
            }
        }
        None => eprintln!("weles-vtpm: {msg}"),
    }
}
