//! Progress of a load: a live line with rows/s and ETA on a terminal, a plain line every few
//! seconds otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    started: Instant,
    last: Instant,
    tty: bool,
    /// Bytes of the input, for the ETA; 0 when unknown (stdin).
    total_bytes: u64,
}

impl Progress {
    pub fn new(label: &str, total_bytes: u64) -> Progress {
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            started: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
            total_bytes,
        }
    }

    /// Reports `rows` done and `bytes` of the input read, at most every 100 ms on a terminal and
    /// every 5 s otherwise.
    pub fn update(&mut self, rows: u64, bytes: u64) {
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        let rate = rows as f64 / secs.max(1e-9);
        let mut line = format!("{}: {rows} rows, {} rows/s", self.label, rate as u64);
        if self.total_bytes > 0 && bytes > 0 {
            let done = (bytes as f64 / self.total_bytes as f64).min(1.0);
            let eta = secs * (1.0 - done) / done.max(1e-9);
            line.push_str(&format!(", {:.0}%, ETA {}", done * 100.0, clock(eta)));
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let bar = self.bar(bytes);
            let _ = write!(err, "\r\x1b[2K{bar} {line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn bar(&self, bytes: u64) -> String {
        const WIDTH: usize = 24;
        if self.total_bytes == 0 {
            return String::new();
        }
        let filled = ((bytes as f64 / self.total_bytes as f64).min(1.0) * WIDTH as f64) as usize;
        format!("[{}{}]", "#".repeat(filled), ".".repeat(WIDTH - filled))
    }

    /// Clears the live line before the summary.
    pub fn finish(&self) {
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
